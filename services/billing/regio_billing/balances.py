"""Reading an account's cached balance and holds."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing.results import BalanceSnapshot


async def read_balance(
    conn: AsyncConnection[TupleRow], account_id: str, for_update: bool = False
) -> BalanceSnapshot:
    """Zeros for an account billing has never seen."""
    cursor = await conn.execute(
        "SELECT balance_nano, held_nano FROM billing.accounts WHERE account_id = %s"
        + (" FOR UPDATE" if for_update else ""),
        (account_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return BalanceSnapshot(account_id=account_id, balance_nano=0, held_nano=0)
    return BalanceSnapshot(account_id=account_id, balance_nano=row[0], held_nano=row[1])
