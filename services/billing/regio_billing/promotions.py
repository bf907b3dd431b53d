"""Promotion rules: a payment of at least `min_payment_nano` made inside [starts_at, ends_at)
earns a bonus of floor(amount * bonus_percent / 100) nano-EUR as a separate promotional lot.

When several promotions qualify, the one with the highest percentage applies (then the oldest):
a payment earns at most one bonus."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing.errors import IdempotencyConflict, require

Connection = AsyncConnection[TupleRow]

PROMOTION_COLUMNS = "id, name, min_payment_nano, bonus_percent, starts_at, ends_at"
MAX_BONUS_PERCENT = 1000


@dataclass(frozen=True)
class Promotion:
    id: int
    name: str
    min_payment_nano: int
    bonus_percent: int
    starts_at: datetime
    ends_at: datetime


def bonus_nano(amount_nano: int, bonus_percent: int) -> int:
    """The bonus of a payment, rounded down to a whole nano-EUR (€150 at 33% = €49.50)."""
    return amount_nano * bonus_percent // 100


def _promotion(row: tuple[object, ...]) -> Promotion:
    return Promotion(*row)  # type: ignore[arg-type]  # columns in PROMOTION_COLUMNS order


async def create_promotion(
    conn: Connection,
    *,
    name: str,
    min_payment_nano: int,
    bonus_percent: int,
    starts_at: datetime,
    ends_at: datetime,
) -> Promotion:
    require(bool(name), "name is required", "name")
    require(min_payment_nano > 0, "min_payment_nano must be positive", "min_payment_nano")
    require(
        0 < bonus_percent <= MAX_BONUS_PERCENT,
        f"bonus_percent must be between 1 and {MAX_BONUS_PERCENT}",
        "bonus_percent",
    )
    require(ends_at > starts_at, "ends_at must be after starts_at", "ends_at")
    try:
        async with conn.transaction():
            cursor = await conn.execute(
                "INSERT INTO billing.promotions"
                " (name, min_payment_nano, bonus_percent, starts_at, ends_at)"
                f" VALUES (%s, %s, %s, %s, %s) RETURNING {PROMOTION_COLUMNS}",
                (name, min_payment_nano, bonus_percent, starts_at, ends_at),
            )
            row = await cursor.fetchone()
    except psycopg.errors.UniqueViolation:
        raise IdempotencyConflict(f"a promotion named {name!r} exists", param="name") from None
    assert row is not None
    return _promotion(row)


async def list_promotions(conn: Connection) -> list[Promotion]:
    cursor = await conn.execute(
        f"SELECT {PROMOTION_COLUMNS} FROM billing.promotions ORDER BY starts_at, id"
    )
    return [_promotion(row) for row in await cursor.fetchall()]


async def promotion_for_payment(conn: Connection, amount_nano: int) -> Promotion | None:
    """The promotion a payment made now earns, if any."""
    cursor = await conn.execute(
        f"SELECT {PROMOTION_COLUMNS} FROM billing.promotions"
        " WHERE min_payment_nano <= %s AND starts_at <= now() AND now() < ends_at"
        " ORDER BY bonus_percent DESC, id LIMIT 1",
        (amount_nano,),
    )
    row = await cursor.fetchone()
    return None if row is None else _promotion(row)
