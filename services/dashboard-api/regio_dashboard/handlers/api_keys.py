"""Inference API keys of an account: issue, list, revoke."""

from __future__ import annotations

from aiohttp import web

from regio_common.errors import NotFound
from regio_dashboard.handlers.common import account_in_scope
from regio_dashboard.pagination import Page, page_request, time_position
from regio_dashboard.schemas import api_key_json


async def create_key(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    key, plaintext = await state.store.create_api_key(account.account_id)
    await state.projection.sync_account_keys(account.account_id)
    return web.json_response(api_key_json(key, plaintext), status=201)


async def list_keys(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    page = page_request("api_keys", request.query)
    rows = await state.store.list_api_keys(account.account_id, page.fetch, time_position(page))
    listed = Page.of(rows, page, lambda k: (k.created_at.isoformat(), k.key_id))
    return web.json_response(listed.json(api_key_json))


async def revoke_key(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    key = await state.store.revoke_api_key(account.account_id, request.match_info["key_id"])
    if key is None:
        raise NotFound("No such API key.", param="key_id")
    await state.projection.sync_account_keys(account.account_id)
    return web.json_response(api_key_json(key))
