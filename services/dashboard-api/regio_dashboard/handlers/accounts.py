"""Accounts: create, list, get, suspend/unsuspend, credits and balance."""

from __future__ import annotations

import uuid

from aiohttp import web

from regio_common.errors import NotFound
from regio_common.money import eur_to_nano
from regio_dashboard.handlers.common import account_in_scope, admin, json_body
from regio_dashboard.pagination import Page, page_request, time_position
from regio_dashboard.schemas import AddCredits, CreateAccount, account_json, balance_json
from regio_dashboard.store import Account


async def create_account(request: web.Request) -> web.Response:
    state = await admin(request)
    body = CreateAccount.parse(await json_body(request))
    account = await state.store.create_account(body.name)
    return web.json_response(account_json(account), status=201)


async def list_accounts(request: web.Request) -> web.Response:
    state = await admin(request)
    page = page_request("accounts", request.query)
    rows = await state.store.list_accounts(
        page.fetch, time_position(page), request.query.get("name")
    )
    listed = Page.of(rows, page, lambda a: (a.created_at.isoformat(), a.account_id))
    return web.json_response(listed.json(account_json))


async def get_account(request: web.Request) -> web.Response:
    _, account = await account_in_scope(request)
    return web.json_response(account_json(account))


async def suspend_account(request: web.Request) -> web.Response:
    return await _set_status(request, "suspended")


async def unsuspend_account(request: web.Request) -> web.Response:
    return await _set_status(request, "active")


async def _set_status(request: web.Request, status: str) -> web.Response:
    """Suspension takes the account's keys out of every gateway; unsuspending restores the keys
    that were not revoked."""
    state, account = await account_in_scope(request, admin_only=True)
    updated: Account | None = await state.store.set_account_status(account.account_id, status)
    if updated is None:
        raise NotFound("No such account.", param="account_id")
    await state.projection.sync_account_keys(account.account_id)
    return web.json_response(account_json(updated))


async def add_credits(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    body = AddCredits.parse(await json_body(request))
    balance = await state.credits.add_credits(
        account.account_id,
        eur_to_nano(body.amount_eur),
        body.idempotency_key or f"admin-{uuid.uuid4().hex}",
        body.reference,
    )
    return web.json_response(balance_json(balance, account.account_id))


async def get_balance(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    balance = await state.credits.balance(account.account_id)
    return web.json_response(balance_json(balance, account.account_id))
