"""`GET /openapi.json`: the API's own description, built from the live route table."""

from __future__ import annotations

from aiohttp import web

from regio_dashboard.openapi import build_document
from regio_dashboard.operations import operation


@operation(
    summary="The OpenAPI 3.1 document of this API",
    tag="meta",
    response=None,
    authenticated=False,
    errors=(),
)
async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(build_document(request.app))
