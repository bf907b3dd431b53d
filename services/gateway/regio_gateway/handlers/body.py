"""Reading a JSON request body within the size limit and the body read timeout."""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import web

from regio_common.errors import ClientError, InvalidRequest, RequestTooLarge


class RequestTimeout(ClientError):
    """The client did not send its whole body in time (a slow or stalled upload): 408. The
    error middleware closes the connection after it, as the rest of the body is unread."""

    status = 408
    default_code = "request_timeout"


async def read_json_body(request: web.Request, limit: int, timeout_seconds: float) -> object:
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"The request body exceeds {limit} bytes.", param="body")
    try:
        async with asyncio.timeout(timeout_seconds):
            raw = await _read_at_most(request, limit)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body was not received within {timeout_seconds:g} seconds.",
            param="body",
        ) from None
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.", param="body")
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequest(f"The request body is not valid JSON: {error}", param="body") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.", param="body") from None
    except ValueError:  # e.g. an integer literal of thousands of digits
        raise InvalidRequest("The request body holds a number too large.", param="body") from None
    if _LONE_SURROGATE_ESCAPE.search(raw):
        _require_encodable(payload)
    return payload


# JSON may spell UTF-16 surrogates as escapes; alone they decode to text that cannot be encoded
# again (to the worker, to protobuf). The cheap search finds candidates; the check decides.
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _require_encodable(payload: object) -> None:
    try:
        json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidRequest(
            "The request body contains an unpaired UTF-16 surrogate escape.", param="body"
        ) from None


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The whole body (it may arrive in many pieces), or 400 as soon as it passes `limit`."""
    pieces: list[bytes] = []
    size = 0
    while True:
        piece = await request.content.readany()
        if not piece:
            return b"".join(pieces)
        size += len(piece)
        if size > limit:
            raise RequestTooLarge(f"The request body exceeds {limit} bytes.", param="body")
        pieces.append(piece)
