"""The type of media bytes from their first bytes (magic numbers), never from what the client or
a web server claims."""

from __future__ import annotations

PNG = "image/png"
JPEG = "image/jpeg"
WEBP = "image/webp"
GIF = "image/gif"
PDF = "application/pdf"
WAV = "audio/wav"
MP3 = "audio/mpeg"

IMAGE_TYPES = frozenset({PNG, JPEG, WEBP, GIF})
AUDIO_TYPES = frozenset({WAV, MP3})
# What a client may name in a data URL for each detected type (aliases seen in the wild).
DECLARED_ALIASES: dict[str, frozenset[str]] = {
    PNG: frozenset({PNG}),
    JPEG: frozenset({JPEG, "image/jpg", "image/pjpeg"}),
    WEBP: frozenset({WEBP}),
    GIF: frozenset({GIF}),
    PDF: frozenset({PDF, "application/x-pdf"}),
    WAV: frozenset({WAV, "audio/x-wav", "audio/wave", "audio/vnd.wave"}),
    MP3: frozenset({MP3, "audio/mp3"}),
}
# input_audio's `format` names.
AUDIO_FORMATS = {"wav": WAV, "mp3": MP3}


def sniff(data: bytes) -> str | None:
    """The media type of `data`, or None when it is none of the accepted types."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if b"%PDF-" in data[:1024]:  # the header may follow a few bytes of junk
        return PDF
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return WAV
    if _is_mp3(data):
        return MP3
    return None


def _is_mp3(data: bytes) -> bool:
    if data.startswith(b"ID3"):
        return True
    # An MPEG audio frame header: 11 sync bits, a version that is not "reserved", layer III.
    return (
        len(data) >= 4
        and data[0] == 0xFF
        and (data[1] & 0xE0) == 0xE0
        and ((data[1] >> 3) & 0x03 != 0x01)
        and ((data[1] >> 1) & 0x03 == 0x01)
    )


def describe(mime_type: str) -> str:
    """A type's name for error messages."""
    names = {PNG: "PNG", JPEG: "JPEG", WEBP: "WebP", GIF: "GIF", PDF: "PDF", WAV: "WAV", MP3: "MP3"}
    return names.get(mime_type, mime_type or "unknown")
