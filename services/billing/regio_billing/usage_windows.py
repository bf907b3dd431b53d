"""The usage_windows table: per-scope counters of the current UTC minute, day and month.

Every writer of a scope's windows holds the row lock of the scope's account (a Reserve locks
its account; settlement locks the accounts of its batch before writing windows), so the
counters are exact and their row locks can never close a cycle with the ledger's lock order.
Window starts are computed by PostgreSQL from its transaction time (`now()`), in UTC whatever
the session's time zone, so every billing replica agrees on the windows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

Connection = AsyncConnection[TupleRow]

# How long windows are kept: a minute window is read for one minute, a day window for a day and
# a month window for a month; the margin keeps the recent past for inspection.
MINUTE_RETENTION = "1 hour"
DAY_AND_MONTH_RETENTION = "62 days"

# The current windows of some scopes: one row per (scope, window kind) that has any usage.
READ_CURRENT = (
    "SELECT scope, window_kind, requests, tokens, spent_nano FROM billing.usage_windows"
    " WHERE scope = ANY(%s) AND (window_kind, window_start) IN ("
    " ('minute', date_trunc('minute', now(), 'UTC')),"
    " ('day', date_trunc('day', now(), 'UTC')),"
    " ('month', date_trunc('month', now(), 'UTC')))"
)


# Count one admitted request in the current minute of each scope of the named parameter
# `counting_scopes` (a sorted list: one lock order); the tail of a statement (see
# limited_reserve.py), so that counting costs the reserve no statement of its own.
COUNT_REQUEST = (
    " INSERT INTO billing.usage_windows AS w (scope, window_kind, window_start, requests)"
    " SELECT scope, 'minute', date_trunc('minute', now(), 'UTC'), 1"
    " FROM unnest(%(counting_scopes)s::text[]) AS scope"
    " ON CONFLICT (scope, window_kind, window_start)"
    " DO UPDATE SET requests = w.requests + 1"
)


async def add_settled_usage(
    conn: Connection, tokens: Mapping[str, int], spent_nano: Mapping[str, int]
) -> None:
    """Add settled tokens to each scope's current minute and charges to its day and month:
    one statement for a whole batch (`tokens` and `spent_nano` are already summed per scope)."""
    rows: dict[tuple[str, str], tuple[int, int]] = {}
    for scope, amount in tokens.items():
        if amount:
            rows[(scope, "minute")] = (amount, 0)
    for scope, amount in spent_nano.items():
        if amount:
            rows[(scope, "day")] = (0, amount)
            rows[(scope, "month")] = (0, amount)
    if not rows:
        return
    ordered = sorted(rows)  # one lock order for every batch
    # Binary arrays (%b): psycopg quotes each element of a text-format array in Python.
    await conn.execute(
        "INSERT INTO billing.usage_windows AS w"
        " (scope, window_kind, window_start, tokens, spent_nano)"
        " SELECT v.scope, v.kind, date_trunc(v.kind, now(), 'UTC'), v.tokens, v.spent"
        " FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[])"
        " AS v(scope, kind, tokens, spent)"
        " ON CONFLICT (scope, window_kind, window_start) DO UPDATE"
        " SET tokens = w.tokens + EXCLUDED.tokens, spent_nano = w.spent_nano + EXCLUDED.spent_nano",
        (
            [scope for scope, _ in ordered],
            [kind for _, kind in ordered],
            [rows[key][0] for key in ordered],
            [rows[key][1] for key in ordered],
        ),
    )


async def prune(conn: Connection) -> int:
    """Delete windows no limit reads any more; returns how many."""
    cursor = await conn.execute(
        "DELETE FROM billing.usage_windows"
        f" WHERE (window_kind = 'minute' AND window_start < now() - interval '{MINUTE_RETENTION}')"
        " OR (window_kind IN ('day', 'month')"
        f" AND window_start < now() - interval '{DAY_AND_MONTH_RETENTION}')"
    )
    return cursor.rowcount


def summed(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Sum amounts per scope."""
    totals: dict[str, int] = {}
    for scope, amount in pairs:
        totals[scope] = totals.get(scope, 0) + amount
    return totals
