"""Account-owner management tokens (admin only): issue, list, revoke."""

from __future__ import annotations

from aiohttp import web

from regio_common.errors import NotFound
from regio_dashboard.handlers.common import account_in_scope, respond
from regio_dashboard.operations import PAGING, operation
from regio_dashboard.pagination import Page, page_request, time_position
from regio_dashboard.schemas import (
    CreatedManagementToken,
    ManagementTokenList,
    ManagementTokenOut,
)


@operation(
    summary="Issue a management token for the account's owner (shown only in this response)",
    tag="management tokens",
    response=CreatedManagementToken,
    status=201,
    admin_only=True,
    idempotent=True,
    secret_field="token",
)
async def create_token(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    token, plaintext = await state.management_tokens.create(account.account_id)
    created = CreatedManagementToken(**ManagementTokenOut.of(token).model_dump(), token=plaintext)
    return respond(created, status=201)


@operation(
    summary="List the account's management tokens",
    tag="management tokens",
    response=ManagementTokenList,
    admin_only=True,
    query=PAGING,
)
async def list_tokens(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    page = page_request("management_tokens", request.query)
    rows = await state.management_tokens.list_tokens(
        account.account_id, page.fetch, time_position(page)
    )
    listed = Page.of(rows, page, lambda t: (t.created_at.isoformat(), t.token_id))
    return respond(
        ManagementTokenList(
            data=[ManagementTokenOut.of(t) for t in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )


@operation(
    summary="Revoke a management token",
    tag="management tokens",
    response=ManagementTokenOut,
    admin_only=True,
)
async def revoke_token(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    token = await state.management_tokens.revoke(account.account_id, request.match_info["token_id"])
    if token is None:
        raise NotFound("No such management token.", param="token_id")
    return respond(ManagementTokenOut.of(token))
