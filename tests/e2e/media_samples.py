"""Small media files made in the tests, and the OpenAI content parts that carry them."""

from __future__ import annotations

import base64
import io
import wave
from typing import Any

from PIL import Image


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, "PNG")
    return buffer.getvalue()


def pdf(*page_sizes: tuple[int, int]) -> bytes:
    """A PDF with one page per (width, height), in points (Pillow saves at 72 dpi)."""
    pages = [Image.new("RGB", size, "white") for size in page_sizes]
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def wav(seconds: float, rate: int = 8000) -> bytes:
    """Mono 16-bit silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * int(rate * seconds))
    return buffer.getvalue()


def data_url(mime_type: str, data: bytes) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def pdf_file_part(data: bytes, filename: str = "document.pdf") -> dict[str, Any]:
    return {
        "type": "file",
        "file": {"file_data": data_url("application/pdf", data), "filename": filename},
    }


def audio_part(data: bytes, audio_format: str = "wav") -> dict[str, Any]:
    return {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(data).decode(), "format": audio_format},
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}
