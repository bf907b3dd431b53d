"""The statements that hold credit for Reserves without usage limits: one hold, or several holds
of one account at one price version, each in a single statement (the pool's connections
autocommit, so one round trip and one commit).

The row lock on the account plus the re-checked WHERE make concurrent holds on one account
serialise, so available credit can never go negative; the WHERE also checks that the price
version the holds were priced at is still the route's latest."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing.balances import read_balance
from regio_billing.limited_reserve import PricedHold
from regio_billing.price_versions import LATEST_VERSION_ID
from regio_billing.results import ReserveOutcome, ReserveResult

Connection = AsyncConnection[TupleRow]

# Raises the account's held amount by %(amount)s if its credit covers it and the holds' price
# version is still the route's latest; answers the credit available afterwards (no row: not held).
_HOLD_ON_ACCOUNT = (
    "held AS ("
    " UPDATE billing.accounts SET held_nano = held_nano + %(amount)s"
    " WHERE account_id = %(account_id)s AND balance_nano - held_nano >= %(amount)s"
    f" AND {LATEST_VERSION_ID} IS NOT DISTINCT FROM %(price_version_id)s::bigint"
    " RETURNING balance_nano - held_nano AS available_after)"
)
_HOLD_COLUMNS = (
    "INSERT INTO billing.holds (transaction_id, account_id, route, region, amount_nano,"
    " input_price_nano, output_price_nano, expires_at, key_id, max_prompt_tokens,"
    " max_completion_tokens)"
)
# The statement's answer: (available after, or NULL when nothing was held; latest version).
_ANSWER = f" SELECT (SELECT available_after FROM held), {LATEST_VERSION_ID}"


class PriceChanged(Exception):
    """The route's price changed since the version a hold was priced at."""


async def hold_one(
    conn: Connection, hold: PricedHold, price_version_id: int | None
) -> ReserveResult | None:
    """Hold, or refuse for insufficient credit. Raises PriceChanged when the version is not the
    latest. None when a concurrent Reserve of the same transaction won: the hold's primary key
    then fails the whole statement, so our increase of held_nano never happened."""
    try:
        cursor = await conn.execute(
            f"WITH {_HOLD_ON_ACCOUNT}, hold AS ({_HOLD_COLUMNS}"
            " SELECT %(transaction_id)s, %(account_id)s, %(route)s, %(region)s, %(amount)s,"
            " %(input_price)s, %(output_price)s, now() + make_interval(secs => %(ttl)s),"
            " %(key_id)s, %(max_prompt)s, %(max_completion)s"
            f" FROM held){_ANSWER}",
            {
                "amount": hold.amount_nano,
                "account_id": hold.request.account_id,
                "transaction_id": hold.request.transaction_id,
                "route": hold.request.route,
                "region": hold.request.region,
                "input_price": hold.prices.input_price_nano,
                "output_price": hold.prices.output_price_nano,
                "ttl": hold.request.ttl_seconds,
                "key_id": hold.request.key_id,
                "max_prompt": hold.request.max_prompt_tokens,
                "max_completion": hold.request.max_completion_tokens,
                "price_version_id": price_version_id,
            },
        )
    except psycopg.errors.UniqueViolation:
        return None
    available_after = await _available_after(cursor, price_version_id)
    if available_after is not None:
        return ReserveResult(ReserveOutcome.HELD, hold.amount_nano, available_after)
    available = (await read_balance(conn, hold.request.account_id)).available_nano
    return ReserveResult(ReserveOutcome.INSUFFICIENT_FUNDS, 0, available)


async def hold_together(
    conn: Connection, holds: Sequence[PricedHold], price_version_id: int | None
) -> list[ReserveResult] | None:
    """Every hold, all of one account and one route, in one statement: all are held or none.
    Raises PriceChanged when the version is not the latest. None when they cannot all be held
    at once (the credit does not cover their sum, or a transaction id is already held): each is
    then decided on its own, by `hold_one`."""
    first = holds[0].request
    assert all(
        (hold.request.account_id, hold.request.route) == (first.account_id, first.route)
        for hold in holds
    )
    amounts = [hold.amount_nano for hold in holds]
    try:
        cursor = await conn.execute(
            "WITH wanted AS ("
            " SELECT * FROM unnest(%(transaction_ids)s::text[], %(regions)s::text[],"
            " %(amounts)s::bigint[], %(ttls)s::int[], %(key_ids)s::text[],"
            " %(max_prompts)s::bigint[], %(max_completions)s::bigint[])"
            " AS w(transaction_id, region, amount_nano, ttl, key_id, max_prompt,"
            " max_completion)),"
            f" {_HOLD_ON_ACCOUNT}, hold AS ({_HOLD_COLUMNS}"
            " SELECT w.transaction_id, %(account_id)s, %(route)s, w.region, w.amount_nano,"
            " %(input_price)s, %(output_price)s, now() + make_interval(secs => w.ttl),"
            " w.key_id, w.max_prompt, w.max_completion"
            f" FROM wanted w, held){_ANSWER}",
            {
                "transaction_ids": [hold.request.transaction_id for hold in holds],
                "regions": [hold.request.region for hold in holds],
                "amounts": amounts,
                "ttls": [hold.request.ttl_seconds for hold in holds],
                "key_ids": [hold.request.key_id for hold in holds],
                "max_prompts": [hold.request.max_prompt_tokens for hold in holds],
                "max_completions": [hold.request.max_completion_tokens for hold in holds],
                "amount": sum(amounts),
                "account_id": first.account_id,
                "route": first.route,
                "input_price": holds[0].prices.input_price_nano,
                "output_price": holds[0].prices.output_price_nano,
                "price_version_id": price_version_id,
            },
        )
    except psycopg.errors.UniqueViolation:
        return None
    available_after = await _available_after(cursor, price_version_id)
    if available_after is None:
        return None
    return [ReserveResult(ReserveOutcome.HELD, amount, available_after) for amount in amounts]


async def _available_after(
    cursor: psycopg.AsyncCursor[TupleRow], price_version_id: int | None
) -> int | None:
    """The credit available after the statement's holds; None when the credit did not cover
    them. Raises PriceChanged when nothing was held because the version is not the latest."""
    row = await cursor.fetchone()
    assert row is not None  # (one row, always)
    available_after: int | None = row[0]
    if available_after is None and row[1] != price_version_id:
        raise PriceChanged
    return available_after
