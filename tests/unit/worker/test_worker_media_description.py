"""What the scripted engine says about the media it received: image sizes and audio lengths read
from header bytes, in message order."""

from __future__ import annotations

import io
import struct
import wave

import pytest

from regio_worker.engine.base import ChatMessage, MediaKind, MediaPart
from regio_worker.engine.media_description import (
    describe_media,
    describe_part,
    image_size,
    wav_seconds,
)


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def jpeg_header(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    huffman = b"\xff\xc4" + struct.pack(">H", 4) + b"\0\0"  # C4 is no frame: skipped
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\0"
    return b"\xff\xd8" + app0 + b"\xff" + huffman + frame + b"\xff\xd9"


def wav(seconds: float, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(rate * seconds))
    return buffer.getvalue()


def test_sizes_from_png_jpeg_and_gif_headers() -> None:
    assert image_size(png_header(640, 480)) == (640, 480)
    assert image_size(jpeg_header(612, 792)) == (612, 792)
    assert image_size(b"GIF89a" + struct.pack("<HH", 3, 5) + b"\0\0\0") == (3, 5)


def test_sizes_of_real_files_written_by_pillow() -> None:
    image_module = pytest.importorskip("PIL.Image")
    for image_format in ("PNG", "JPEG", "GIF", "WEBP"):
        buffer = io.BytesIO()
        image_module.new("RGB", (37, 21), "red").save(buffer, image_format)
        assert image_size(buffer.getvalue()) == (37, 21), image_format
    lossless = io.BytesIO()
    image_module.new("RGB", (37, 21), "red").save(lossless, "WEBP", lossless=True)
    assert image_size(lossless.getvalue()) == (37, 21)


def test_unreadable_images_have_no_size() -> None:
    assert image_size(b"") is None
    assert image_size(b"%PDF-1.7") is None
    assert image_size(b"\xff\xd8\xff\xe0\x00") is None  # a JPEG cut short
    assert image_size(b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0") is None


def test_wav_length_from_its_header() -> None:
    assert wav_seconds(wav(1.0)) == pytest.approx(1.0)
    assert wav_seconds(wav(0.5, rate=16000)) == pytest.approx(0.5)
    assert wav_seconds(b"ID3\x04mp3 data") is None


def test_description_per_part_with_question_marks_for_the_unknown() -> None:
    assert describe_part(MediaPart(MediaKind.IMAGE, png_header(8, 16), "image/png", 0)) == (
        "image/png 8x16"
    )
    assert describe_part(MediaPart(MediaKind.AUDIO, wav(1.0), "audio/wav", 0)) == "audio/wav 1.0s"
    assert describe_part(MediaPart(MediaKind.AUDIO, b"ID3...", "audio/mpeg", 0)) == "audio/mpeg ?"
    assert describe_part(MediaPart(MediaKind.IMAGE, b"????", "image/webp", 0)) == "image/webp ?"


def test_description_of_all_messages_in_order() -> None:
    messages = (
        ChatMessage(
            "user",
            "two pages then a clip",
            media=(
                MediaPart(MediaKind.AUDIO, wav(0.5), "audio/wav", 21),
                MediaPart(MediaKind.IMAGE, png_header(612, 792), "image/png", 0),
                MediaPart(MediaKind.IMAGE, png_header(792, 612), "image/png", 0),
            ),
        ),
        ChatMessage("assistant", "ok"),
        ChatMessage("user", "and this", media=(MediaPart(MediaKind.IMAGE, b"?", "image/gif", 8),)),
    )
    assert describe_media(messages) == (
        "[media: image/png 612x792, image/png 792x612, audio/wav 0.5s, image/gif ?]"
    )
    assert describe_media((ChatMessage("user", "no media"),)) == ""
