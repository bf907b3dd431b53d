"""Account-owner management tokens (admin only): issue, list, revoke."""

from __future__ import annotations

from aiohttp import web

from regio_common.errors import NotFound
from regio_dashboard.handlers.common import account_in_scope
from regio_dashboard.pagination import Page, page_request, time_position
from regio_dashboard.schemas import management_token_json


async def create_token(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    token, plaintext = await state.management_tokens.create(account.account_id)
    return web.json_response(management_token_json(token, plaintext), status=201)


async def list_tokens(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    page = page_request("management_tokens", request.query)
    rows = await state.management_tokens.list_tokens(
        account.account_id, page.fetch, time_position(page)
    )
    listed = Page.of(rows, page, lambda t: (t.created_at.isoformat(), t.token_id))
    return web.json_response(listed.json(management_token_json))


async def revoke_token(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    token = await state.management_tokens.revoke(account.account_id, request.match_info["token_id"])
    if token is None:
        raise NotFound("No such management token.", param="token_id")
    return web.json_response(management_token_json(token))
