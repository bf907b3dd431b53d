"""Credit lots (invariant I8): paid and promotional credit are kept apart.

Every payment opens one paid lot; a qualifying payment also opens one promotional lot (its
bonus). The remaining amounts of an account's lots always sum to its balance.

Consumption order: a charge takes from **promotional lots first, then paid lots**, oldest
first within each kind (lot id order). Bonus credit is used before the customer's own money,
so the refundable paid part of a payment stays as large as possible.

Lock order: callers lock the account row first, then its lots (FOR UPDATE, in id order)."""

from __future__ import annotations

from typing import Literal

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

Connection = AsyncConnection[TupleRow]
LotKind = Literal["paid", "promotional"]

# ORDER BY of the consumption order above.
CONSUMPTION_ORDER = "(kind = 'paid'), id"


async def open_lot(
    conn: Connection,
    *,
    account_id: str,
    kind: LotKind,
    payment_id: int,
    journal_id: int,
    amount_nano: int,
    promotion_id: int | None = None,
) -> int:
    cursor = await conn.execute(
        "INSERT INTO billing.lots (account_id, kind, payment_id, promotion_id, journal_id,"
        " amount_nano, remaining_nano) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (account_id, kind, payment_id, promotion_id, journal_id, amount_nano, amount_nano),
    )
    row = await cursor.fetchone()
    assert row is not None
    lot_id: int = row[0]
    return lot_id


async def consume(conn: Connection, account_id: str, amount_nano: int, journal_id: int) -> None:
    """Take `amount_nano` from the account's lots in consumption order, recording each part
    as a movement of entry `journal_id`. The caller holds the account row lock."""
    if amount_nano <= 0:
        return
    cursor = await conn.execute(
        "SELECT id, remaining_nano FROM billing.lots WHERE account_id = %s AND remaining_nano > 0"
        f" ORDER BY {CONSUMPTION_ORDER} FOR UPDATE",
        (account_id,),
    )
    left = amount_nano
    parts: list[tuple[int, int]] = []
    for lot_id, remaining in await cursor.fetchall():
        if left == 0:
            break
        part = min(left, remaining)
        parts.append((lot_id, part))
        left -= part
    if left:
        raise RuntimeError(f"lots of {account_id} cannot cover {amount_nano} (short by {left})")
    for lot_id, part in parts:
        await take(conn, lot_id, part, journal_id)


async def take(conn: Connection, lot_id: int, amount_nano: int, journal_id: int) -> None:
    """Take `amount_nano` (> 0) from one lot for entry `journal_id`."""
    await conn.execute(
        "UPDATE billing.lots SET remaining_nano = remaining_nano - %s WHERE id = %s",
        (amount_nano, lot_id),
    )
    await conn.execute(
        "INSERT INTO billing.lot_movements (lot_id, journal_id, amount_nano) VALUES (%s, %s, %s)",
        (lot_id, journal_id, -amount_nano),
    )


async def payment_lots(conn: Connection, payment_id: int) -> dict[str, tuple[int, int]]:
    """kind -> (lot id, remaining) of one payment's lots, locked for update."""
    cursor = await conn.execute(
        "SELECT kind, id, remaining_nano FROM billing.lots WHERE payment_id = %s"
        " ORDER BY id FOR UPDATE",
        (payment_id,),
    )
    return {kind: (lot_id, remaining) for kind, lot_id, remaining in await cursor.fetchall()}
