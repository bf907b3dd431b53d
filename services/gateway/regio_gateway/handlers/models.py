"""`GET /v1/models` and `GET /health`."""

from __future__ import annotations

from aiohttp import web

from regio_gateway.auth import authenticate
from regio_gateway.protocol.models import Model, ModelList
from regio_gateway.regions import endpoint_region
from regio_gateway.state import STATE_KEY


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    key = authenticate(request, state.config)
    region = endpoint_region(request, state.catalogue, state.settings.default_region)
    models = [
        Model.from_route(state.catalogue.routes[a.route], created=a.created)
        for a in state.config.activations_of(key.account_id)
        if a.region == region and a.route in state.catalogue.routes and key.may_use(a.route, region)
    ]
    models.sort(key=lambda model: model.id)
    return web.Response(
        text=ModelList(data=models).model_dump_json(), content_type="application/json"
    )


async def health(request: web.Request) -> web.Response:
    """Availability of this endpoint: its region, and the routes with live workers in it."""
    state = request.app[STATE_KEY]
    region = endpoint_region(request, state.catalogue, state.settings.default_region)
    countries = set(state.catalogue.countries(region))
    workers: dict[str, int] = {}
    served_from: dict[str, set[str]] = {}
    for hb in state.workers.live_workers():
        if hb.country in countries:
            workers[hb.route] = workers.get(hb.route, 0) + 1
            served_from.setdefault(hb.route, set()).add(hb.country)
    routes = {
        route: {"workers": count, "countries": sorted(served_from[route])}
        for route, count in sorted(workers.items())
    }
    ready = state.nats.is_connected and state.config.synced.is_set()
    body = {
        "status": "ok" if ready else "unavailable",
        "region": region,
        "countries": sorted(countries),
        "routes": routes,
    }
    return web.json_response(body, status=200 if ready else 503)
