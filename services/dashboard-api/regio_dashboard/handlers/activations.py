"""Route activations of an account: activate (or update), list, cancel."""

from __future__ import annotations

from aiohttp import web

from regio_common.errors import InvalidRequest, NotFound, UnprocessableEntity
from regio_dashboard.handlers.common import account_in_scope, json_body, respond
from regio_dashboard.operations import PAGING, operation
from regio_dashboard.pagination import Page, page_request
from regio_dashboard.schemas import (
    ActivationList,
    ActivationOut,
    ActivationSettings,
    CancelledActivation,
)


@operation(
    summary="Activate a route in a region, or change the activation's settings",
    tag="activations",
    response=ActivationOut,
    body=ActivationSettings,
    description=(
        "Role: admin or the account's owner. A free system prompt longer than the limit "
        "(REGIO_FREE_SYSTEM_PROMPT_MAX_CHARS, 1,024 by default) is a 422 naming the limit. "
        "Gateways apply the change within a second."
    ),
)
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
    body: ActivationSettings = ActivationSettings.parse(await json_body(request))
    limit = state.free_system_prompt_max_chars
    if len(body.free_system_prompt) > limit:
        raise UnprocessableEntity(
            f"The free system prompt is limited to {limit} characters; this one has "
            f"{len(body.free_system_prompt)}.",
            param="free_system_prompt",
        )
    activation = await state.store.upsert_activation(
        account.account_id,
        route.name,
        region,
        body.free_system_prompt,
        body.thinking.default_effort,
        body.thinking.reasoning_output,
    )
    await state.projection.sync_activation(account.account_id, route.name, region)
    return respond(ActivationOut.of(activation))


@operation(
    summary="List the account's activations",
    tag="activations",
    response=ActivationList,
    query=PAGING,
)
async def list_activations(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    page = page_request("activations", request.query)
    rows = await state.store.list_activations(account.account_id, page.fetch, page.after)
    listed = Page.of(rows, page, lambda a: (a.route, a.region))
    return respond(
        ActivationList(
            data=[ActivationOut.of(a) for a in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )


@operation(summary="Cancel an activation", tag="activations", response=CancelledActivation)
async def cancel_activation(request: web.Request) -> web.Response:
    """Gateways stop serving the route to this account in this region within a second."""
    state, account = await account_in_scope(request)
    route, region = request.match_info["route"], request.match_info["region"]
    if not await state.store.delete_activation(account.account_id, route, region):
        raise NotFound(f"No activation of '{route}' in region '{region}'.", param="route")
    await state.projection.sync_activation(account.account_id, route, region)
    return respond(CancelledActivation(account_id=account.account_id, route=route, region=region))
