"""`data:` URLs and plain base64 payloads, decoded within a size limit."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from regio_gateway.media.problems import MediaProblem

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),", re.ASCII)
_WHITESPACE = re.compile(rb"[ \t\r\n]+")


@dataclass(frozen=True)
class DataUrl:
    mime_type: str  # lower case; "" when the URL names none
    data: bytes


def is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def decode_data_url(url: str, max_bytes: int) -> DataUrl:
    """`data:<type>;base64,<payload>`; only base64 payloads are accepted (media is binary)."""
    match = _DATA_URL.match(url)
    if match is None:
        raise MediaProblem("The data URL is malformed; expected data:<type>;base64,<data>.")
    params = [param.strip().lower() for param in match["params"].split(";") if param.strip()]
    if "base64" not in params:
        raise MediaProblem("The data URL must be base64-encoded (data:<type>;base64,<data>).")
    payload = url[match.end() :]
    return DataUrl((match["mime"] or "").lower(), decode_base64(payload, max_bytes))


def decode_base64(payload: str, max_bytes: int) -> bytes:
    """Standard base64 (line breaks tolerated), refused before decoding when it would exceed
    `max_bytes`."""
    try:
        raw = payload.encode("ascii")
    except UnicodeEncodeError:
        raise MediaProblem("The base64 data holds characters outside base64.") from None
    raw = _WHITESPACE.sub(b"", raw)
    if len(raw) // 4 * 3 > max_bytes + 2:
        raise MediaProblem(f"The media is larger than {max_bytes} bytes.")
    if not raw:
        raise MediaProblem("The base64 data is empty.")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise MediaProblem("The base64 data is not valid base64.") from None
    if len(data) > max_bytes:
        raise MediaProblem(f"The media is larger than {max_bytes} bytes.")
    return data
