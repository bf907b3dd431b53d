"""Inference API keys of an account: issue (optionally scoped to activations), list, revoke."""

from __future__ import annotations

from aiohttp import web

from regio_common.catalogue import Catalogue
from regio_common.errors import NotFound, UnprocessableEntity
from regio_dashboard.handlers.common import account_in_scope, json_body, respond
from regio_dashboard.operations import PAGING, operation
from regio_dashboard.pagination import Page, page_request, time_position
from regio_dashboard.schemas import ApiKeyList, ApiKeyOut, CreateApiKey, CreatedApiKey


def check_scope(catalogue: Catalogue, activations: list[str]) -> None:
    """A scope may only name routes the catalogue offers in that region (422 otherwise)."""
    for index, ref in enumerate(activations):
        route_name, _, region = ref.partition("/")
        route = catalogue.routes.get(route_name)
        if route is None or region not in route.regions:
            raise UnprocessableEntity(
                f"'{ref}' is not a route offered in that region of the catalogue.",
                param=f"activations[{index}]",
            )


@operation(
    summary="Issue an inference API key (its secret is shown only in this response)",
    tag="keys",
    response=CreatedApiKey,
    status=201,
    body=CreateApiKey,
    idempotent=True,
    secret_field="key",
)
async def create_key(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    body: CreateApiKey = CreateApiKey.parse(await json_body(request))
    check_scope(state.catalogue, body.activations)
    key, plaintext = await state.store.create_api_key(account.account_id, body.activations)
    await state.projection.sync_account(account.account_id)
    created = CreatedApiKey(**ApiKeyOut.of(key).model_dump(), key=plaintext)
    return respond(created, status=201)


@operation(summary="List the account's API keys", tag="keys", response=ApiKeyList, query=PAGING)
async def list_keys(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    page = page_request("api_keys", request.query)
    rows = await state.store.list_api_keys(account.account_id, page.fetch, time_position(page))
    listed = Page.of(rows, page, lambda k: (k.created_at.isoformat(), k.key_id))
    return respond(
        ApiKeyList(
            data=[ApiKeyOut.of(k) for k in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )


@operation(
    summary="Revoke an API key (refused at every gateway within a second)",
    tag="keys",
    response=ApiKeyOut,
)
async def revoke_key(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    key = await state.store.revoke_api_key(account.account_id, request.match_info["key_id"])
    if key is None:
        raise NotFound("No such API key.", param="key_id")
    await state.projection.sync_account(account.account_id)
    return respond(ApiKeyOut.of(key))
