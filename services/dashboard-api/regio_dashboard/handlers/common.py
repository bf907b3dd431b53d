"""What every dashboard handler does first: authenticate, authorize, read the body."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel

from regio_common.errors import InvalidRequest, NotFound
from regio_dashboard.auth import Principal, authenticate
from regio_dashboard.operations import operation
from regio_dashboard.schemas import Health
from regio_dashboard.state import STATE_KEY, DashboardState
from regio_dashboard.store import Account


@dataclass(frozen=True)
class Caller:
    state: DashboardState
    principal: Principal


NUL = "\x00"


def refuse_nul(value: object, param: str) -> None:
    """PostgreSQL text cannot hold NUL characters: refuse them as a 400 rather than fail."""
    if isinstance(value, str) and NUL in value:
        raise InvalidRequest(
            f"Invalid value for '{param}': NUL characters are not accepted.", param=param
        )
    if isinstance(value, dict):
        for key, item in value.items():
            refuse_nul(key, param)
            refuse_nul(item, f"{param}.{key}" if param != "body" else str(key))
    if isinstance(value, list):
        for index, item in enumerate(value):
            refuse_nul(item, f"{param}[{index}]")


async def caller(request: web.Request) -> Caller:
    """The authenticated caller (401 when there is no valid credential)."""
    for name, value in (*request.match_info.items(), *request.query.items()):
        refuse_nul(value, name)
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
    who, account = await caller_in_account(request, admin_only=admin_only)
    return who.state, account


async def caller_in_account(
    request: web.Request, *, admin_only: bool = False
) -> tuple[Caller, Account]:
    """`account_in_scope`, for handlers that also need to know who called."""
    who = await caller(request)
    if admin_only:
        who.principal.require_admin()
    account_id = request.match_info["account_id"]
    who.principal.require_account(account_id)
    account = await who.state.store.get_account(account_id)
    if account is None:
        raise NotFound("No such account.", param="account_id")
    return who, account


async def json_body(request: web.Request) -> object:
    """The decoded body, {} when there is none (read once and cached by aiohttp, so the
    idempotency middleware may have read it first)."""
    raw = await request.read() if request.body_exists else b""
    if not raw.strip():
        return {}
    try:
        decoded: object = json.loads(raw)
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.", param="body") from None
    refuse_nul(decoded, "body")
    return decoded


def respond(model: BaseModel, status: int = 200) -> web.Response:
    """The model as a JSON response (what the OpenAPI document says the operation returns)."""
    return web.json_response(model.model_dump(mode="json"), status=status)


@operation(
    summary="Liveness of the dashboard API",
    tag="meta",
    response=Health,
    authenticated=False,
    errors=(),
)
async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    ok = state.nats.is_connected
    return web.json_response({"status": "ok" if ok else "unavailable"}, status=200 if ok else 503)
