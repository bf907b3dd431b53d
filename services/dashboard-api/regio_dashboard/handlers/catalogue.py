"""The route catalogue as a customer orders from it: routes with their limits, capabilities,
regions and current prices (from billing, which versions them). Any authenticated caller may
read it — an owner needs it to choose an activation — but only the admin sees where the GGUF
comes from (a deployment detail) and may change a price."""

from __future__ import annotations

from aiohttp import web

from regio_common.errors import ModelNotFound
from regio_common.money import eur_to_nano
from regio_dashboard.handlers.common import admin, caller, json_body, respond
from regio_dashboard.handlers.credits import BILLING_ERRORS
from regio_dashboard.operations import PAGING, operation
from regio_dashboard.pagination import Page, page_request
from regio_dashboard.schemas_credits import (
    CatalogueList,
    CatalogueRouteOut,
    RoutePriceChange,
    RoutePriceOut,
    SetRoutePrice,
)


@operation(
    summary="The route catalogue with current prices (by route name)",
    tag="catalogue",
    response=CatalogueList,
    query=PAGING,
    errors=BILLING_ERRORS,
    description="Every route: base models, context length, output limits, capabilities, "
    "supported parameters, regions and current price (per 1M tokens). The GGUF source is "
    "shown to the admin only. Role: any authenticated caller.",
)
async def list_catalogue(request: web.Request) -> web.Response:
    who = await caller(request)
    page = page_request("catalogue", request.query, arity=1)
    routes = sorted(who.state.catalogue.routes.values(), key=lambda route: route.name)
    if page.after is not None:
        routes = [route for route in routes if route.name > page.after[0]]
    listed = Page.of(routes[: page.fetch], page, lambda route: (route.name,))
    prices = {price.route: price for price in await who.state.credits.prices()}
    with_source = who.principal.role == "admin"
    return respond(
        CatalogueList(
            data=[CatalogueRouteOut.of(r, prices.get(r.name), with_source) for r in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )


@operation(
    summary="Set a route's price (a new version, effective now)",
    tag="catalogue",
    response=RoutePriceChange,
    body=SetRoutePrice,
    admin_only=True,
    errors=BILLING_ERRORS,
    description="Requests admitted before the change keep the price they were held at; the "
    "next request pays the new one. History is kept. Role: admin.",
)
async def set_route_price(request: web.Request) -> web.Response:
    state = await admin(request)
    route = request.match_info["route"]
    if route not in state.catalogue.routes:
        raise ModelNotFound(f"The route '{route}' does not exist.", param="route")
    body = SetRoutePrice.parse(await json_body(request))
    changed = await state.credits.set_route_price(
        route,
        eur_to_nano(body.input_price_eur_per_mtok),
        eur_to_nano(body.output_price_eur_per_mtok),
    )
    current = RoutePriceOut.of(changed.price)
    return respond(RoutePriceChange(**current.model_dump(), new_version=changed.new_version))
