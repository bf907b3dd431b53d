"""Admin REST handlers: accounts, keys, credits, activations."""

from __future__ import annotations

import hmac
import uuid

from aiohttp import web

from regio_common.errors import AuthenticationFailed, InvalidRequest, NotFound
from regio_common.money import eur_to_nano
from regio_dashboard.schemas import (
    ActivationSettings,
    AddCredits,
    CreateAccount,
    account_json,
    activation_json,
    api_key_json,
    balance_json,
)
from regio_dashboard.state import STATE_KEY, DashboardState
from regio_dashboard.store import Account


def _require_admin(request: web.Request) -> DashboardState:
    state = request.app[STATE_KEY]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = state.admin_token.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise AuthenticationFailed("Admin credentials required.", code="invalid_admin_token")
    return state


async def _json(request: web.Request) -> object:
    try:
        return await request.json()
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.", param="body") from None


async def _account(state: DashboardState, request: web.Request) -> Account:
    account = await state.store.get_account(request.match_info["account_id"])
    if account is None:
        raise NotFound("No such account.", param="account_id")
    return account


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    ok = state.nats.is_connected
    return web.json_response({"status": "ok" if ok else "unavailable"}, status=200 if ok else 503)


async def create_account(request: web.Request) -> web.Response:
    state = _require_admin(request)
    body = CreateAccount.parse(await _json(request))
    account = await state.store.create_account(body.name)
    return web.json_response(account_json(account), status=201)


async def list_accounts(request: web.Request) -> web.Response:
    state = _require_admin(request)
    accounts = await state.store.list_accounts(request.query.get("name"))
    return web.json_response({"object": "list", "data": [account_json(a) for a in accounts]})


async def get_account(request: web.Request) -> web.Response:
    state = _require_admin(request)
    return web.json_response(account_json(await _account(state, request)))


async def create_api_key(request: web.Request) -> web.Response:
    state = _require_admin(request)
    account = await _account(state, request)
    key, plaintext = await state.store.create_api_key(account.account_id)
    await state.projection.put_api_key(key)
    return web.json_response(api_key_json(key, plaintext), status=201)


async def add_credits(request: web.Request) -> web.Response:
    state = _require_admin(request)
    account = await _account(state, request)
    body = AddCredits.parse(await _json(request))
    balance = await state.credits.add_credits(
        account.account_id,
        eur_to_nano(body.amount_eur),
        body.idempotency_key or f"admin-{uuid.uuid4().hex}",
        body.reference,
    )
    return web.json_response(balance_json(balance, account.account_id))


async def get_balance(request: web.Request) -> web.Response:
    state = _require_admin(request)
    account = await _account(state, request)
    balance = await state.credits.balance(account.account_id)
    return web.json_response(balance_json(balance, account.account_id))


async def put_activation(request: web.Request) -> web.Response:
    state = _require_admin(request)
    account = await _account(state, request)
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
    body = ActivationSettings.parse(await _json(request) if request.can_read_body else {})
    limit = state.free_system_prompt_max_chars
    if len(body.free_system_prompt) > limit:
        raise InvalidRequest(
            f"The free system prompt is limited to {limit} characters.",
            param="free_system_prompt",
        )
    activation = await state.store.upsert_activation(
        account.account_id, route.name, region, body.free_system_prompt
    )
    await state.projection.put_activation(activation)
    return web.json_response(activation_json(activation))


async def list_activations(request: web.Request) -> web.Response:
    state = _require_admin(request)
    account = await _account(state, request)
    activations = await state.store.activations(account.account_id)
    return web.json_response({"object": "list", "data": [activation_json(a) for a in activations]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    accounts = "/admin/v1/accounts"
    app.router.add_post(accounts, create_account)
    app.router.add_get(accounts, list_accounts)
    app.router.add_get(accounts + "/{account_id}", get_account)
    app.router.add_post(accounts + "/{account_id}/keys", create_api_key)
    app.router.add_post(accounts + "/{account_id}/credits", add_credits)
    app.router.add_get(accounts + "/{account_id}/balance", get_balance)
    app.router.add_get(accounts + "/{account_id}/activations", list_activations)
    app.router.add_put(accounts + "/{account_id}/activations/{route}/{region}", put_activation)
