"""Route activations of an account: activate (or update), list, cancel."""

from __future__ import annotations

from aiohttp import web

from regio_common.errors import InvalidRequest, NotFound, UnprocessableEntity
from regio_dashboard.handlers.common import account_in_scope, json_body
from regio_dashboard.pagination import Page, page_request
from regio_dashboard.schemas import ActivationSettings, activation_json


async def put_activation(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    route_name, region = request.match_info["route"], request.match_info["region"]
    route = state.catalogue.routes.get(route_name)
    if route is None:
        raise NotFound(f"No route named '{route_name}'.", param="route", code="model_not_found")
    if region not in route.regions:
        raise InvalidRequest(
            f"Route '{route_name}' is not offered in region '{region}'; "
            f"it is offered in: {', '.join(route.regions)}.",
            param="region",
            code="region_mismatch",
        )
    body = ActivationSettings.parse(await json_body(request))
    limit = state.free_system_prompt_max_chars
    if len(body.free_system_prompt) > limit:
        raise UnprocessableEntity(
            f"The free system prompt is limited to {limit} characters; this one has "
            f"{len(body.free_system_prompt)}.",
            param="free_system_prompt",
        )
    activation = await state.store.upsert_activation(
        account.account_id, route.name, region, body.free_system_prompt
    )
    await state.projection.sync_activation(account.account_id, route.name, region)
    return web.json_response(activation_json(activation))


async def list_activations(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    page = page_request("activations", request.query)
    rows = await state.store.list_activations(account.account_id, page.fetch, page.after)
    listed = Page.of(rows, page, lambda a: (a.route, a.region))
    return web.json_response(listed.json(activation_json))


async def cancel_activation(request: web.Request) -> web.Response:
    """Gateways stop serving the route to this account in this region within a second."""
    state, account = await account_in_scope(request)
    route, region = request.match_info["route"], request.match_info["region"]
    if not await state.store.delete_activation(account.account_id, route, region):
        raise NotFound(f"No activation of '{route}' in region '{region}'.", param="route")
    await state.projection.sync_activation(account.account_id, route, region)
    return web.json_response(
        {
            "object": "activation",
            "account_id": account.account_id,
            "route": route,
            "region": region,
            "deleted": True,
        }
    )
