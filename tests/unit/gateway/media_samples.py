"""Small media files made in memory for the media tests: images, PDFs and audio clips."""

from __future__ import annotations

import base64
import io
import wave

from PIL import Image


def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    return _image("PNG", width, height, color)


def jpeg(width: int = 64, height: int = 48) -> bytes:
    return _image("JPEG", width, height, "green")


def webp(width: int = 32, height: int = 16) -> bytes:
    return _image("WEBP", width, height, "blue")


def gif(width: int = 20, height: int = 10) -> bytes:
    return _image("GIF", width, height, "white")


def pdf(pages: int = 2) -> bytes:
    """A PDF of `pages` letter-size pages (612 x 792 points)."""
    images = [Image.new("RGB", (612, 792), color) for color in ["white", "yellow"] * pages][:pages]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def encrypted_pdf() -> bytes:
    """A PDF with a standard security handler whose user password is not empty."""
    return b"""%PDF-1.4
1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj
2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj
3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >> endobj
4 0 obj << /Filter /Standard /V 1 /R 2 /P -4
/O <0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20>
/U <a102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20> >> endobj
trailer << /Root 1 0 R /Encrypt 4 0 R
/ID [<00112233445566778899aabbccddeeff> <00112233445566778899aabbccddeeff>] >>
%%EOF
"""


def wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(b"\x00\x00" * int(seconds * rate))
    return buffer.getvalue()


def mp3() -> bytes:
    """An MPEG-1 layer III frame header (128 kbit/s, 44.1 kHz) and silence."""
    return b"\xff\xfb\x90\x64" + b"\x00" * 413


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, mime_type: str) -> str:
    return f"data:{mime_type};base64,{b64(data)}"


def _image(image_format: str, width: int, height: int, color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=image_format)
    return buffer.getvalue()
