"""A Reserve that carries usage limits: check them and hold in ONE transaction.

The account row lock (the one every hold of the account takes anyway) serialises the reserves
of an account and of all its keys, so the counters read under it are exact across every
gateway and billing replica: 50 concurrent requests against a limit of 10 admit exactly 10.

Two round trips, pipelined: (1) lock the account, then read an earlier hold of the transaction,
the open holds, the scopes' windows and the route's price (statements of their own, so that
they see what committed while the lock was awaited); (2) when admitted, raise held, insert the
hold and count the request (one statement), commit. A Reserve without limits never comes here (see
Ledger.reserve)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing import usage_windows
from regio_billing.errors import IdempotencyConflict
from regio_billing.price_versions import current_prices
from regio_billing.pricing import Prices, hold_amount_nano
from regio_billing.results import ReserveOutcome, ReserveResult
from regio_billing.usage_limits import (
    LimitedScope,
    ScopeKind,
    ScopeUsage,
    UsageLimits,
    WindowClock,
    account_scope,
    first_refusal,
    headroom,
    key_scope,
)

Connection = AsyncConnection[TupleRow]

# An earlier hold of the transaction (its account and amount), the account's open holds, the
# key's open holds that track limits and what they hold, and the transaction time the windows
# are computed from. A NULL key matches no hold.
HOLDS = (
    "SELECT e.account_id, e.amount_nano, a.open_holds, k.open_holds, k.held_nano, now() FROM"
    " (SELECT count(*) AS open_holds FROM billing.holds"
    "  WHERE account_id = %(account_id)s AND status = 'open') a"
    " CROSS JOIN (SELECT count(*) AS open_holds,"
    "  coalesce(sum(amount_nano), 0)::bigint AS held_nano FROM billing.holds"
    "  WHERE key_id = %(key_id)s AND status = 'open' AND tracks_limits) k"
    " LEFT JOIN billing.holds e ON e.transaction_id = %(transaction_id)s"
)

# One statement: raise held, insert the hold, count the request in the minute window of the
# scopes with a request limit (none: an empty array).
HOLD_AND_COUNT = (
    "WITH held AS ("
    " UPDATE billing.accounts SET held_nano = held_nano + %(amount)s"
    " WHERE account_id = %(account_id)s),"
    " hold AS ("
    " INSERT INTO billing.holds (transaction_id, account_id, route, region, amount_nano,"
    " input_price_nano, output_price_nano, expires_at, key_id, tracks_limits,"
    " max_prompt_tokens, max_completion_tokens)"
    " VALUES (%(transaction_id)s, %(account_id)s, %(route)s, %(region)s, %(amount)s,"
    " %(input_price)s, %(output_price)s, now() + make_interval(secs => %(ttl)s), %(key_id)s,"
    " true, %(max_prompt)s, %(max_completion)s))" + usage_windows.COUNT_REQUEST
)


@dataclass(frozen=True)
class HoldRequest:
    """What a Reserve asks to hold, before it is priced."""

    transaction_id: str
    account_id: str
    key_id: str
    route: str
    region: str
    ttl_seconds: int
    max_prompt_tokens: int
    max_completion_tokens: int


@dataclass(frozen=True)
class PricedHold:
    request: HoldRequest
    prices: Prices

    @property
    def amount_nano(self) -> int:
        """The worst-case cost: what is held."""
        request = self.request
        return hold_amount_nano(
            request.max_prompt_tokens, request.max_completion_tokens, self.prices
        )


@dataclass(frozen=True)
class _Snapshot:
    """What the reading round trip found, under the account lock."""

    account_exists: bool
    available_nano: int
    earlier_hold: tuple[str, int] | None  # (account, amount) of a hold of the same transaction
    scopes: list[LimitedScope]  # key first
    clock: WindowClock
    prices: Prices


async def reserve_with_limits(
    conn: Connection,
    request: HoldRequest,
    catalogued: Prices,
    key_limits: UsageLimits,
    account_limits: UsageLimits,
) -> tuple[ReserveResult | None, PricedHold | None]:
    """Hold, or refuse with the first limit that does not admit the request, or with
    INSUFFICIENT_FUNDS. A repeated transaction answers its first hold and counts nothing.
    Also answers the priced hold (None when the transaction was repeated).

    None as the result when a concurrent Reserve of the same transaction id under another
    account won the race for the hold's primary key (everything here was rolled back)."""
    try:
        async with conn.pipeline(), conn.transaction():
            seen = await _read(conn, request, catalogued, key_limits, account_limits)
            room = headroom(seen.scopes, seen.clock)
            if seen.earlier_hold is not None:
                account_id, amount = seen.earlier_hold
                if account_id != request.account_id:
                    raise IdempotencyConflict(
                        "transaction_id was already used by another account",
                        param="transaction_id",
                    )
                outcome = ReserveOutcome.HELD
                return ReserveResult(outcome, amount, seen.available_nano, None, room), None
            hold = PricedHold(request, seen.prices)
            amount = hold.amount_nano
            refusal = first_refusal(seen.scopes, amount, seen.clock)
            if refusal is not None:
                outcome = ReserveOutcome.LIMITED
                return ReserveResult(outcome, 0, seen.available_nano, refusal, room), hold
            if not seen.account_exists or seen.available_nano < amount:
                outcome = ReserveOutcome.INSUFFICIENT_FUNDS
                return ReserveResult(outcome, 0, seen.available_nano, None, room), hold
            counting = [scope.name for scope in seen.scopes if scope.limits.requests_per_minute]
            await _hold_and_count(conn, hold, counting)
            counted = headroom([scope.counted() for scope in seen.scopes], seen.clock)
            available_after = seen.available_nano - amount
            return ReserveResult(ReserveOutcome.HELD, amount, available_after, None, counted), hold
    except psycopg.errors.UniqueViolation:
        return None, None


async def _read(
    conn: Connection,
    request: HoldRequest,
    catalogued: Prices,
    key_limits: UsageLimits,
    account_limits: UsageLimits,
) -> _Snapshot:
    """Lock the account, then read what the decision needs (pipelined: one round trip)."""
    account_scope_name = account_scope(request.account_id)
    key_scope_name = key_scope(request.key_id) if request.key_id else None
    # The lock an UPDATE of the row takes (as a reserve without limits does): it serialises
    # the account's reserves and settlements, not the foreign key checks of rows that merely
    # reference the account. The reads are statements of their own, so that they see what
    # committed while the lock was awaited.
    account = await conn.execute(
        "SELECT balance_nano, held_nano FROM billing.accounts"
        " WHERE account_id = %s FOR NO KEY UPDATE",
        (request.account_id,),
    )
    holds = await conn.execute(
        HOLDS,
        {
            "account_id": request.account_id,
            "key_id": request.key_id or None,
            "transaction_id": request.transaction_id,
        },
    )
    scope_names = [account_scope_name] + ([key_scope_name] if key_scope_name else [])
    windows = await conn.execute(usage_windows.READ_CURRENT, (scope_names,))
    # Waiting for this answer brings all the others (the pipeline's one round trip).
    prices = await current_prices(conn, request.route, catalogued)
    account_row = await account.fetchone()
    holds_row = await holds.fetchone()
    usage = _window_usage(await windows.fetchall())
    assert holds_row is not None  # aggregates always answer one row
    earlier_account, earlier_amount, account_open, key_open, key_held, now = holds_row
    balance, held = account_row if account_row is not None else (0, 0)
    scopes = [
        LimitedScope(
            ScopeKind.ACCOUNT,
            account_scope_name,
            account_limits,
            usage.get(account_scope_name, ScopeUsage()).with_holds(account_open, held),
        )
    ]
    if key_scope_name is not None:
        key_usage = usage.get(key_scope_name, ScopeUsage()).with_holds(key_open, key_held)
        scopes.insert(0, LimitedScope(ScopeKind.KEY, key_scope_name, key_limits, key_usage))
    return _Snapshot(
        account_exists=account_row is not None,
        available_nano=balance - held,
        earlier_hold=None if earlier_account is None else (earlier_account, earlier_amount),
        scopes=scopes,
        clock=WindowClock(now),
        prices=prices,
    )


def _window_usage(rows: list[tuple[Any, ...]]) -> dict[str, ScopeUsage]:
    """The scopes' usage in their current windows (a missing row is an unused window)."""
    minute: dict[str, tuple[int, int]] = {}
    day: dict[str, int] = {}
    month: dict[str, int] = {}
    for scope, kind, requests, tokens, spent in rows:
        if kind == "minute":
            minute[scope] = (requests, tokens)
        elif kind == "day":
            day[scope] = spent
        else:
            month[scope] = spent
    return {
        scope: ScopeUsage(
            requests_this_minute=minute.get(scope, (0, 0))[0],
            tokens_this_minute=minute.get(scope, (0, 0))[1],
            spent_today_nano=day.get(scope, 0),
            spent_this_month_nano=month.get(scope, 0),
        )
        for scope in {*minute, *day, *month}
    }


async def _hold_and_count(conn: Connection, hold: PricedHold, counting: list[str]) -> None:
    request = hold.request
    await conn.execute(
        HOLD_AND_COUNT,
        {
            "amount": hold.amount_nano,
            "account_id": request.account_id,
            "transaction_id": request.transaction_id,
            "route": request.route,
            "region": request.region,
            "input_price": hold.prices.input_price_nano,
            "output_price": hold.prices.output_price_nano,
            "ttl": request.ttl_seconds,
            "key_id": request.key_id,
            "max_prompt": request.max_prompt_tokens,
            "max_completion": request.max_completion_tokens,
            "counting_scopes": sorted(counting),
        },
    )
