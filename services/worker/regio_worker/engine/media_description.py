"""A short description of the media parts a request brought, read from their header bytes: image
sizes (PNG, JPEG, GIF, WebP) and audio lengths (WAV), e.g.
`[media: image/png 640x480, audio/wav 1.0s]`.

The scripted engine starts its answers with it, so tests of the whole stack can see what the
gateway's conversion delivered (a PDF arrives as one image per page). Pure Python on purpose: the
worker has no imaging library. A size or length that cannot be read is "?"."""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Iterable

from regio_worker.engine.base import ChatMessage, MediaKind, MediaPart

UNKNOWN = "?"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xDA)})


def describe_media(messages: Iterable[ChatMessage]) -> str:
    """`[media: …]` for the parts of all messages in order, or "" when there are none."""
    parts = [
        describe_part(part)
        for message in messages
        for part in sorted(message.media, key=lambda part: part.text_offset)
    ]
    return f"[media: {', '.join(parts)}]" if parts else ""


def describe_part(part: MediaPart) -> str:
    if part.kind is MediaKind.IMAGE:
        size = image_size(part.data)
        return f"{part.mime_type} {f'{size[0]}x{size[1]}' if size else UNKNOWN}"
    seconds = wav_seconds(part.data)
    return f"{part.mime_type} {UNKNOWN if seconds is None else f'{seconds:.1f}s'}"


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG, JPEG, GIF or WebP header; None otherwise."""
    if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2  # after the start-of-image marker
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _JPEG_FRAME_MARKERS:
            frame = data[position + 5 : position + 9]  # after length and sample precision
            if len(frame) < 4:
                return None
            height, width = struct.unpack(">HH", frame)
            return width, height
        position += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def wav_seconds(data: bytes) -> float | None:
    """The length of a PCM WAV clip from its header (the standard library's reader)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as clip:
            rate = clip.getframerate()
            return clip.getnframes() / rate if rate else None
    except (wave.Error, EOFError, struct.error):
        return None
