"""Usage limits of an account and of its keys: requests and tokens per minute, concurrent
requests, daily and monthly spend caps. Billing enforces them; gateways read them from the
config bucket, where every change is projected at once.

The admin sets an account's limits (its owner may read them); the admin or the account's owner
sets a key's limits, so that customers can cap their own keys. Every change is audited."""

from __future__ import annotations

from aiohttp import web

from regio_common.errors import NotFound
from regio_dashboard.auth import Principal
from regio_dashboard.handlers.common import (
    Caller,
    account_in_scope,
    caller_in_account,
    json_body,
    respond,
)
from regio_dashboard.operations import operation
from regio_dashboard.schemas import LimitsOut, UsageLimitsBody
from regio_dashboard.store import ApiKey

LIMITS_RULES = (
    "Windows are UTC: the minute, the day, the calendar month. Tokens are prompt + completion "
    "tokens of settled usage; spend is what was charged plus what is held. Over a limit, the "
    "gateway answers 429 `rate_limit_exceeded` with `Retry-After`. Gateways apply a change "
    "within a second."
)


def actor_of(principal: Principal, admin_label: str) -> str:
    """Who the audit log names: the admin credential's label, or the account's owner."""
    return admin_label if principal.role == "admin" else f"owner:{principal.account_id}"


async def _key_in_scope(request: web.Request) -> tuple[Caller, ApiKey]:
    """The key of the URL, if it is the account's and the caller may manage the account
    (another account's key answers 404, like a key that does not exist)."""
    who, account = await caller_in_account(request)
    key = await who.state.store.get_api_key(account.account_id, request.match_info["key_id"])
    if key is None:
        raise NotFound("No such API key.", param="key_id")
    return who, key


@operation(
    summary="The account's usage limits",
    tag="limits",
    response=LimitsOut,
    description=f"Role: admin or the account's owner. {LIMITS_RULES}",
)
async def get_account_limits(request: web.Request) -> web.Response:
    _, account = await account_in_scope(request)
    return respond(LimitsOut.of_account(account.account_id, account.limits))


@operation(
    summary="Set the account's usage limits (replaces all of them)",
    tag="limits",
    response=LimitsOut,
    body=UsageLimitsBody,
    admin_only=True,
    description=(
        "Role: admin. Null or omitted: no limit. The limits apply to all the account's keys "
        f"together, on top of each key's own. {LIMITS_RULES}"
    ),
)
async def put_account_limits(request: web.Request) -> web.Response:
    who, account = await caller_in_account(request, admin_only=True)
    state = who.state
    body: UsageLimitsBody = UsageLimitsBody.parse(await json_body(request))
    actor = actor_of(who.principal, state.admin_label)
    stored = await state.limits.set_account_limits(account.account_id, body.usage_limits(), actor)
    if stored is None:
        raise NotFound("No such account.", param="account_id")
    await state.projection.sync_account(account.account_id)
    return respond(LimitsOut.of_account(account.account_id, stored))


@operation(
    summary="An API key's usage limits",
    tag="limits",
    response=LimitsOut,
    description=f"Role: admin or the account's owner. {LIMITS_RULES}",
)
async def get_key_limits(request: web.Request) -> web.Response:
    _, key = await _key_in_scope(request)
    return respond(LimitsOut.of_key(key.account_id, key.key_id, key.limits))


@operation(
    summary="Set an API key's usage limits (replaces all of them)",
    tag="limits",
    response=LimitsOut,
    body=UsageLimitsBody,
    description=(
        "Role: admin or the account's owner (customers cap their own keys). Null or omitted: "
        f"no limit for this key (the account's limits still apply). {LIMITS_RULES}"
    ),
)
async def put_key_limits(request: web.Request) -> web.Response:
    who, key = await _key_in_scope(request)
    state = who.state
    body: UsageLimitsBody = UsageLimitsBody.parse(await json_body(request))
    actor = actor_of(who.principal, state.admin_label)
    stored = await state.limits.set_key_limits(
        key.account_id, key.key_id, body.usage_limits(), actor
    )
    if stored is None:
        raise NotFound("No such API key.", param="key_id")
    await state.projection.sync_account(key.account_id)
    return respond(LimitsOut.of_key(key.account_id, key.key_id, stored))
