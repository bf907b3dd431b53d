"""What every dashboard handler does first: authenticate, authorize, read the body."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from regio_common.errors import InvalidRequest, NotFound
from regio_dashboard.auth import Principal, authenticate
from regio_dashboard.state import STATE_KEY, DashboardState
from regio_dashboard.store import Account


@dataclass(frozen=True)
class Caller:
    state: DashboardState
    principal: Principal


async def caller(request: web.Request) -> Caller:
    """The authenticated caller (401 when there is no valid credential)."""
    state = request.app[STATE_KEY]
    principal = await authenticate(
        request.headers.get("Authorization"),
        state.admin_token,
        state.management_tokens.account_of,
    )
    return Caller(state, principal)


async def admin(request: web.Request) -> DashboardState:
    """The state, for admin-only operations (403 for an account owner)."""
    who = await caller(request)
    who.principal.require_admin()
    return who.state


async def account_in_scope(
    request: web.Request, *, admin_only: bool = False
) -> tuple[DashboardState, Account]:
    """The account of the URL, if the caller may manage it: the admin any account, an owner
    only their own (any other answers 404, like an account that does not exist)."""
    who = await caller(request)
    if admin_only:
        who.principal.require_admin()
    account_id = request.match_info["account_id"]
    who.principal.require_account(account_id)
    account = await who.state.store.get_account(account_id)
    if account is None:
        raise NotFound("No such account.", param="account_id")
    return who.state, account


async def json_body(request: web.Request) -> object:
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.", param="body") from None


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    ok = state.nats.is_connected
    return web.json_response({"status": "ok" if ok else "unavailable"}, status=200 if ok else 503)
