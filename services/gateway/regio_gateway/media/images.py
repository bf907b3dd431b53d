"""Images checked with Pillow and handed on in a format every llama.cpp projector decodes (its
loader reads PNG and JPEG, not WebP): PNG and JPEG as sent, WebP and GIF (first frame) as PNG."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from regio_gateway.media.problems import MediaProblem
from regio_gateway.media.sniff import GIF, JPEG, PNG, WEBP, describe

PASSED_AS_SENT = frozenset({PNG, JPEG})
CONVERTED_TO_PNG = frozenset({WEBP, GIF})


def worker_image(data: bytes, mime_type: str, max_pixels: int) -> tuple[str, bytes]:
    """(mime type, bytes) of the image for the worker. Reads only the header of PNG and JPEG
    images (their pixels are decoded by the worker); blocking: call it from a worker thread."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about large images; the pixel limit below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise MediaProblem(
                        f"The image has {width}x{height} pixels; at most {max_pixels} pixels "
                        "are accepted."
                    )
                if mime_type in PASSED_AS_SENT:
                    image.verify()
                    return mime_type, data
                if mime_type in CONVERTED_TO_PNG:
                    return PNG, _as_png(image)
    except Image.DecompressionBombError:
        raise MediaProblem(f"The image has more than {max_pixels} pixels.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        # Pillow reports damaged files with these (SyntaxError: a broken PNG chunk).
        raise MediaProblem(f"The {describe(mime_type)} image is damaged.") from None
    raise MediaProblem(f"{describe(mime_type)} is not an accepted image type.")


def _as_png(image: Image.Image) -> bytes:
    mode = "RGBA" if image.mode in ("RGBA", "LA", "P", "PA") else "RGB"
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()
