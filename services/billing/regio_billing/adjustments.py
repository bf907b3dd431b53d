"""Manual credit adjustments (the dashboard admin's, audited there): one journal entry of kind
'adjustment' against the `adjustments` ledger account, idempotent by its key.

A credit is booked like a payment without a promotion (a payments row and its paid lot, so the
lots still sum to the balance and it can be refunded like any payment). A debit takes from the
lots in consumption order and is refused, never partially applied, when it exceeds the credit
available (open holds stay covered: I4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing import lots
from regio_billing.balances import read_balance
from regio_billing.database import BillingPool
from regio_billing.errors import IdempotencyConflict, require
from regio_billing.journal import JournalKind, customer_ledger_account, post_entry
from regio_billing.results import BalanceSnapshot

Connection = AsyncConnection[TupleRow]
ADJUSTMENTS_ACCOUNT = "adjustments"
ADJUSTMENT = cast(JournalKind, "adjustment")  # migration 004 admits the kind
PAYMENT_KEY_PREFIX = "adjustment:"


@dataclass(frozen=True)
class AdjustmentResult:
    applied: bool
    already_applied: bool
    balance: BalanceSnapshot


async def adjust_credits(
    pool: BillingPool, account_id: str, amount_nano: int, idempotency_key: str, reason: str
) -> AdjustmentResult:
    require(bool(account_id), "account_id is required", "account_id")
    require(amount_nano != 0, "amount_nano must not be 0", "amount_nano")
    require(bool(idempotency_key), "idempotency_key is required", "idempotency_key")
    require(bool(reason), "reason is required", "reason")
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO billing.accounts (account_id) VALUES (%s)"
            " ON CONFLICT (account_id) DO NOTHING",
            (account_id,),
        )
        balance = await read_balance(conn, account_id, for_update=True)
        if await _already_applied(conn, idempotency_key, account_id, amount_nano):
            return AdjustmentResult(True, True, balance)
        if amount_nano < 0 and -amount_nano > balance.available_nano:
            return AdjustmentResult(False, False, balance)
        journal_id = await post_entry(
            conn,
            kind=ADJUSTMENT,
            reference_key=idempotency_key,
            memo=reason,
            postings=[
                (ADJUSTMENTS_ACCOUNT, -amount_nano),
                (customer_ledger_account(account_id), amount_nano),
            ],
        )
        assert journal_id is not None  # the account lock and the check above exclude a twin
        if amount_nano > 0:
            await _open_credit_lot(
                conn, account_id, amount_nano, idempotency_key, reason, journal_id
            )
        else:
            await lots.consume(conn, account_id, -amount_nano, journal_id)
        await conn.execute(
            "UPDATE billing.accounts SET balance_nano = balance_nano + %s WHERE account_id = %s",
            (amount_nano, account_id),
        )
        return AdjustmentResult(True, False, await read_balance(conn, account_id))


async def _already_applied(
    conn: Connection, idempotency_key: str, account_id: str, amount_nano: int
) -> bool:
    """True when this key already adjusted this account by this amount; a conflict when it
    adjusted something else."""
    cursor = await conn.execute(
        "SELECT p.ledger_account, p.amount_nano FROM billing.journal j"
        " JOIN billing.postings p ON p.journal_id = j.id"
        " WHERE j.kind = 'adjustment' AND j.reference_key = %s AND p.ledger_account <> %s",
        (idempotency_key, ADJUSTMENTS_ACCOUNT),
    )
    row = await cursor.fetchone()
    if row is None:
        return False
    if (row[0], row[1]) != (customer_ledger_account(account_id), amount_nano):
        raise IdempotencyConflict(
            "idempotency_key was already used for a different adjustment",
            param="idempotency_key",
        )
    return True


async def _open_credit_lot(
    conn: Connection,
    account_id: str,
    amount_nano: int,
    idempotency_key: str,
    reason: str,
    journal_id: int,
) -> None:
    cursor = await conn.execute(
        "INSERT INTO billing.payments"
        " (idempotency_key, account_id, amount_nano, reference, journal_id)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (PAYMENT_KEY_PREFIX + idempotency_key, account_id, amount_nano, reason, journal_id),
    )
    row = await cursor.fetchone()
    assert row is not None
    await lots.open_lot(
        conn,
        account_id=account_id,
        kind="paid",
        payment_id=row[0],
        journal_id=journal_id,
        amount_nano=amount_nano,
    )
