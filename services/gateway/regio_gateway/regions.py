"""The region of an endpoint comes from its host name: `de.<domain>` serves region `de`."""

from __future__ import annotations

from aiohttp import web

from regio_common.catalogue import Catalogue


def endpoint_region(request: web.Request, catalogue: Catalogue, default: str) -> str:
    host = (request.host or "").split(":", 1)[0].lower()
    first_label = host.split(".", 1)[0]
    if "." in host and first_label in catalogue.regions:
        return first_label
    return default
