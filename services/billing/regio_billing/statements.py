"""Statements: an account's journal entries, usage per day and activation, and payments, read
back newest first with keyset paging; and the route price versions (read and append).

Every list is one index range scan on (account, time) — see migration 003 — and pages by the
position of the last row seen, so rows written meanwhile never shift a later page."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime

import structlog
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing.database import BillingPool
from regio_billing.errors import require
from regio_billing.journal import customer_ledger_account
from regio_billing.price_versions import PriceSource, publish_prices
from regio_billing.pricing import Prices
from regio_common.errors import NotFound

log = structlog.get_logger()

Connection = AsyncConnection[TupleRow]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class RouteNotFound(NotFound):
    """A price for a route that is not in the catalogue (Reserve would never use it)."""

    default_code = "route_not_found"


@dataclass(frozen=True)
class TimeWindow:
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class TransactionLine:
    id: int
    kind: str
    balance_effect_nano: int
    reference: str
    memo: str
    created_at: datetime
    route: str | None
    region: str | None
    prompt_tokens: int | None
    completion_tokens: int | None

    @property
    def amount_nano(self) -> int:
        return abs(self.balance_effect_nano)


@dataclass(frozen=True)
class UsageDay:
    day: date
    route: str
    region: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    charged_nano: int


@dataclass(frozen=True)
class UsagePosition:
    day: date
    route: str
    region: str


@dataclass(frozen=True)
class PaymentLine:
    id: int
    account_id: str
    idempotency_key: str
    amount_nano: int
    reference: str
    created_at: datetime
    bonus_nano: int
    promotion: str | None
    paid_remaining_nano: int
    bonus_remaining_nano: int
    refunded_nano: int | None  # None: never refunded
    clawed_back_nano: int | None
    refunded_at: datetime | None


@dataclass(frozen=True)
class PriceVersion:
    version: int
    route: str
    prices: Prices
    valid_from: datetime
    current: bool


def page_limit(limit: int) -> int:
    """0 means the default; anything else must be 1..MAX_LIMIT."""
    if limit == 0:
        return DEFAULT_LIMIT
    require(1 <= limit <= MAX_LIMIT, f"limit must be between 1 and {MAX_LIMIT}", "limit")
    return limit


@dataclass
class _Filter:
    """WHERE conditions with their query parameters, built in step."""

    conditions: list[str]
    params: list[object]

    @classmethod
    def of(cls, condition: str, *params: object) -> _Filter:
        return cls([condition], list(params))

    def add(self, condition: str, *params: object) -> None:
        self.conditions.append(condition)
        self.params.extend(params)

    def window(self, column: str, window: TimeWindow) -> None:
        if window.since is not None:
            self.add(f"{column} >= %s", window.since)
        if window.until is not None:
            self.add(f"{column} < %s", window.until)

    @property
    def sql(self) -> str:
        return " AND ".join(self.conditions)


TRANSACTIONS_QUERY = """
SELECT p.journal_id, j.kind, p.amount_nano, j.reference_key, j.memo, p.created_at,
       h.route, h.region, s.prompt_tokens, s.completion_tokens
FROM billing.postings p
JOIN billing.journal j ON j.id = p.journal_id
LEFT JOIN billing.settlements s ON s.journal_id = p.journal_id
LEFT JOIN billing.holds h ON h.transaction_id = s.transaction_id
WHERE {where}
ORDER BY p.created_at DESC, p.journal_id DESC
LIMIT %s
"""

# The usage rows of one page: settlements grouped per UTC day and activation.
USAGE_QUERY = """
SELECT * FROM (
    SELECT (s.created_at AT TIME ZONE 'UTC')::date AS day, h.route, h.region, count(*),
           sum(s.prompt_tokens)::bigint, sum(s.completion_tokens)::bigint,
           sum(s.charged_nano)::bigint
    FROM billing.settlements s
    JOIN billing.holds h ON h.transaction_id = s.transaction_id
    WHERE {where}
    GROUP BY 1, 2, 3
) usage_days
WHERE {after}
ORDER BY day DESC, route, region
LIMIT %s
"""

PAYMENTS_QUERY = """
SELECT p.id, p.account_id, p.idempotency_key, p.amount_nano, p.reference, p.created_at,
       coalesce(bonus.amount_nano, 0), promotion.name,
       coalesce(paid.remaining_nano, 0), coalesce(bonus.remaining_nano, 0),
       r.refunded_nano, r.clawed_back_nano, r.created_at
FROM billing.payments p
LEFT JOIN billing.lots paid ON paid.payment_id = p.id AND paid.kind = 'paid'
LEFT JOIN billing.lots bonus ON bonus.payment_id = p.id AND bonus.kind = 'promotional'
LEFT JOIN billing.promotions promotion ON promotion.id = bonus.promotion_id
LEFT JOIN billing.refunds r ON r.payment_id = p.id
WHERE {where}
ORDER BY p.created_at DESC, p.id DESC
LIMIT %s
"""


# Served by route_prices_latest_idx (route, valid_from DESC, id DESC).
CURRENT_PRICES_QUERY = """
SELECT DISTINCT ON (route) id, route, input_price_nano, output_price_nano, valid_from, true
FROM billing.route_prices WHERE {where}
ORDER BY route, valid_from DESC, id DESC
"""

PRICE_HISTORY_QUERY = """
SELECT id, route, input_price_nano, output_price_nano, valid_from,
       row_number() OVER (PARTITION BY route ORDER BY valid_from DESC, id DESC) = 1
FROM billing.route_prices WHERE {where}
ORDER BY route, valid_from DESC, id DESC
"""


class Statements:
    """Read side of the ledger, plus route price versions. `routes`: the catalogue's routes,
    the only ones a price may be set for."""

    def __init__(self, pool: BillingPool, routes: Collection[str]) -> None:
        self._pool = pool
        self._routes = frozenset(routes)

    async def transactions(
        self,
        account_id: str,
        window: TimeWindow,
        limit: int,
        after: tuple[datetime, int] | None = None,
    ) -> list[TransactionLine]:
        """The account's journal entries (one per posting to its ledger account)."""
        require(bool(account_id), "account_id is required", "account_id")
        where = _Filter.of("p.ledger_account = %s", customer_ledger_account(account_id))
        where.window("p.created_at", window)
        if after is not None:
            where.add("(p.created_at, p.journal_id) < (%s, %s)", *after)
        rows = await self._fetch(TRANSACTIONS_QUERY, where, page_limit(limit))
        return [TransactionLine(*row) for row in rows]

    async def usage(
        self,
        account_id: str,
        window: TimeWindow,
        limit: int,
        *,
        route: str = "",
        region: str = "",
        after: UsagePosition | None = None,
    ) -> list[UsageDay]:
        """Settled requests per UTC day (newest first) and activation (route, region)."""
        require(bool(account_id), "account_id is required", "account_id")
        where = _Filter.of("s.account_id = %s", account_id)
        where.window("s.created_at", window)
        if route:
            where.add("h.route = %s", route)
        if region:
            where.add("h.region = %s", region)
        after_day = _Filter.of("true")
        if after is not None:
            # Days newer than the cursor's are listed already: keep them out of the scan too.
            where.add("s.created_at < (%s::date + 1)::timestamp AT TIME ZONE 'UTC'", after.day)
            after_day = _Filter.of(
                "(day < %s OR (day = %s AND (route, region) > (%s, %s)))",
                after.day,
                after.day,
                after.route,
                after.region,
            )
        query = USAGE_QUERY.format(where=where.sql, after=after_day.sql)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                query, [*where.params, *after_day.params, page_limit(limit)]
            )
            rows = await cursor.fetchall()
        return [UsageDay(*row) for row in rows]

    async def payments(
        self,
        account_id: str,
        window: TimeWindow,
        limit: int,
        after: tuple[datetime, int] | None = None,
    ) -> list[PaymentLine]:
        """The account's payments, each with its bonus, unused parts and refund."""
        require(bool(account_id), "account_id is required", "account_id")
        where = _Filter.of("p.account_id = %s", account_id)
        where.window("p.created_at", window)
        if after is not None:
            where.add("(p.created_at, p.id) < (%s, %s)", *after)
        rows = await self._fetch(PAYMENTS_QUERY, where, page_limit(limit))
        return [PaymentLine(*row) for row in rows]

    async def payment(self, account_id: str, payment_id: int) -> PaymentLine:
        """One payment of the account; NotFound when it is another account's or unknown."""
        require(bool(account_id), "account_id is required", "account_id")
        where = _Filter.of("p.account_id = %s", account_id)
        where.add("p.id = %s", payment_id)
        rows = await self._fetch(PAYMENTS_QUERY, where, 1)
        if not rows:
            raise NotFound("no such payment for this account", param="payment_id")
        return PaymentLine(*rows[0])

    async def _fetch(self, template: str, where: _Filter, limit: int) -> list[TupleRow]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(template.format(where=where.sql), [*where.params, limit])
            return await cursor.fetchall()

    async def prices(self, route: str = "", include_history: bool = False) -> list[PriceVersion]:
        """Per route (by name), newest version first; only the current one unless history."""
        where = _Filter.of("true")
        if route:
            where.add("route = %s", route)
        query = (PRICE_HISTORY_QUERY if include_history else CURRENT_PRICES_QUERY).format(
            where=where.sql
        )
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, where.params)
            rows = await cursor.fetchall()
        return [
            PriceVersion(
                version=row[0],
                route=row[1],
                prices=Prices(input_price_nano=row[2], output_price_nano=row[3]),
                valid_from=row[4],
                current=row[5],
            )
            for row in rows
        ]

    async def set_route_price(self, route: str, prices: Prices) -> tuple[PriceVersion, bool]:
        """Append a version effective now, unless the route already has this price; returns
        the current version and whether it is new. History is never rewritten."""
        require(bool(route), "route is required", "route")
        require(prices.input_price_nano >= 0, "prices cannot be negative", "input_price_nano")
        require(prices.output_price_nano >= 0, "prices cannot be negative", "output_price_nano")
        if route not in self._routes:
            raise RouteNotFound(f"route {route!r} is not in the catalogue", param="route")
        async with self._pool.connection() as conn, conn.transaction():
            changed = await publish_prices(conn, {route: prices}, PriceSource.ADMIN)
        current = await self.prices(route)
        log.info("route_price_set", route=route, new_version=bool(changed))
        return current[0], bool(changed)
