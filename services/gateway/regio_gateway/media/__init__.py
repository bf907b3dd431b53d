"""Images, PDFs and audio in chat messages: gating by the route's capabilities, decoding data
URLs, fetching https URLs, checking types, converting PDFs to page images, and the limits.

The worker receives bytes it can feed to a multimodal projector as they are: PNG or JPEG images
(WebP and GIF are converted to PNG here, PDFs rendered to one PNG per page) and WAV or MP3
audio."""
