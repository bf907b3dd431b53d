"""Reading a JSON request body within the size limit."""

from __future__ import annotations

import json

from aiohttp import web

from regio_common.errors import InvalidRequest, RequestTooLarge


async def read_json_body(request: web.Request, limit: int) -> object:
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"The request body exceeds {limit} bytes.", param="body")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise RequestTooLarge(f"The request body exceeds {limit} bytes.", param="body")
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.", param="body")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequest(f"The request body is not valid JSON: {error}", param="body") from None
