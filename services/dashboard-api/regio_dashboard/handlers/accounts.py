"""Accounts: create, list, get, suspend/unsuspend, credits and balance."""

from __future__ import annotations

import uuid

from aiohttp import web

from regio_common.errors import NotFound
from regio_common.money import eur_to_nano
from regio_dashboard.handlers.common import account_in_scope, admin, json_body, respond
from regio_dashboard.operations import CLIENT_ERRORS, PAGING, QueryParameter, operation
from regio_dashboard.pagination import Page, page_request, time_position
from regio_dashboard.schemas import (
    AccountList,
    AccountOut,
    AddCredits,
    BalanceOut,
    CreateAccount,
)
from regio_dashboard.store import Account

BILLING_ERRORS = (*CLIENT_ERRORS, 503)
IDEMPOTENCY_HEADER = "Idempotency-Key"


@operation(
    summary="Create an account",
    tag="accounts",
    response=AccountOut,
    status=201,
    body=CreateAccount,
    admin_only=True,
    idempotent=True,
)
async def create_account(request: web.Request) -> web.Response:
    state = await admin(request)
    body = CreateAccount.parse(await json_body(request))
    account = await state.store.create_account(body.name)
    return respond(AccountOut.of(account), status=201)


@operation(
    summary="List accounts (oldest first)",
    tag="accounts",
    response=AccountList,
    admin_only=True,
    query=(
        *PAGING,
        QueryParameter(
            "name", "Only the account with this name.", {"type": "string", "maxLength": 100}
        ),
    ),
)
async def list_accounts(request: web.Request) -> web.Response:
    state = await admin(request)
    page = page_request("accounts", request.query)
    rows = await state.store.list_accounts(
        page.fetch, time_position(page), request.query.get("name")
    )
    listed = Page.of(rows, page, lambda a: (a.created_at.isoformat(), a.account_id))
    return respond(
        AccountList(
            data=[AccountOut.of(a) for a in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )


@operation(summary="Get an account", tag="accounts", response=AccountOut)
async def get_account(request: web.Request) -> web.Response:
    _, account = await account_in_scope(request)
    return respond(AccountOut.of(account))


@operation(
    summary="Suspend an account (its keys stop working at every gateway)",
    tag="accounts",
    response=AccountOut,
    admin_only=True,
)
async def suspend_account(request: web.Request) -> web.Response:
    return await _set_status(request, "suspended")


@operation(
    summary="Unsuspend an account (its unrevoked keys work again)",
    tag="accounts",
    response=AccountOut,
    admin_only=True,
)
async def unsuspend_account(request: web.Request) -> web.Response:
    return await _set_status(request, "active")


async def _set_status(request: web.Request, status: str) -> web.Response:
    """Suspension takes the account's keys out of every gateway; unsuspending restores the keys
    that were not revoked."""
    state, account = await account_in_scope(request, admin_only=True)
    updated: Account | None = await state.store.set_account_status(account.account_id, status)
    if updated is None:
        raise NotFound("No such account.", param="account_id")
    await state.projection.sync_account(account.account_id)
    return respond(AccountOut.of(updated))


@operation(
    summary="Add credits (a payment)",
    tag="credits",
    response=BalanceOut,
    body=AddCredits,
    admin_only=True,
    idempotent=True,
    errors=BILLING_ERRORS,
)
async def add_credits(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    body = AddCredits.parse(await json_body(request))
    payment_key = (
        body.idempotency_key
        or request.headers.get(IDEMPOTENCY_HEADER)
        or f"admin-{uuid.uuid4().hex}"
    )
    balance = await state.credits.add_credits(
        account.account_id, eur_to_nano(body.amount_eur), payment_key, body.reference
    )
    return respond(BalanceOut.of(balance, account.account_id))


@operation(summary="Credit balance", tag="credits", response=BalanceOut, errors=BILLING_ERRORS)
async def get_balance(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    balance = await state.credits.balance(account.account_id)
    return respond(BalanceOut.of(balance, account.account_id))
