"""Refunding a payment: its unused paid lot goes back to the payer, its unused bonus back to
the promotions account, never more than the account has available (open holds stay covered).

When open holds leave too little available for both, the bonus is clawed back first: a bonus
never outlives the refund of the payment that earned it while the customer is paid back.
A payment is refunded once; a repeat answers the first refund."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing import lots
from regio_billing.balances import read_balance
from regio_billing.errors import PaymentNotFound
from regio_billing.journal import (
    PAYMENTS_ACCOUNT,
    PROMOTIONS_ACCOUNT,
    JournalKind,
    customer_ledger_account,
    post_entry,
)
from regio_billing.results import RefundResult

Connection = AsyncConnection[TupleRow]


async def refund_payment(conn: Connection, payment_key: str) -> RefundResult:
    """Runs inside the caller's transaction."""
    cursor = await conn.execute(
        "SELECT id, account_id FROM billing.payments WHERE idempotency_key = %s",
        (payment_key,),
    )
    payment = await cursor.fetchone()
    if payment is None:
        raise PaymentNotFound("no payment with this idempotency_key", param="idempotency_key")
    payment_id: int = payment[0]
    account_id: str = payment[1]
    # The account lock serialises refunds of one account with its charges and reserves.
    balance = await read_balance(conn, account_id, for_update=True)
    cursor = await conn.execute(
        "SELECT refunded_nano, clawed_back_nano FROM billing.refunds WHERE payment_id = %s",
        (payment_id,),
    )
    previous = await cursor.fetchone()
    if previous is not None:
        return RefundResult(payment_key, account_id, previous[0], previous[1], True, balance)

    payment_lots = await lots.payment_lots(conn, payment_id)
    available = balance.available_nano
    bonus_lot = payment_lots.get("promotional")
    clawed = min(bonus_lot[1], available) if bonus_lot else 0
    paid_lot = payment_lots["paid"]
    refunded = min(paid_lot[1], available - clawed)

    clawback_journal = await _take_back(
        conn, "clawback", payment_key, account_id, PROMOTIONS_ACCOUNT, bonus_lot, clawed
    )
    refund_journal = await _take_back(
        conn, "refund", payment_key, account_id, PAYMENTS_ACCOUNT, paid_lot, refunded
    )
    await conn.execute(
        "UPDATE billing.accounts SET balance_nano = balance_nano - %s WHERE account_id = %s",
        (clawed + refunded, account_id),
    )
    await conn.execute(
        "INSERT INTO billing.refunds (payment_id, account_id, refunded_nano, clawed_back_nano,"
        " refund_journal_id, clawback_journal_id) VALUES (%s, %s, %s, %s, %s, %s)",
        (payment_id, account_id, refunded, clawed, refund_journal, clawback_journal),
    )
    after = await read_balance(conn, account_id)
    return RefundResult(payment_key, account_id, refunded, clawed, False, after)


async def _take_back(
    conn: Connection,
    kind: JournalKind,
    payment_key: str,
    account_id: str,
    counterparty: str,
    lot: tuple[int, int] | None,
    amount_nano: int,
) -> int | None:
    """Move `amount_nano` of one lot from the customer to `counterparty`; None for zero."""
    if amount_nano == 0 or lot is None:
        return None
    journal_id = await post_entry(
        conn,
        kind=kind,
        reference_key=payment_key,
        memo="refund of payment",
        postings=[(customer_ledger_account(account_id), -amount_nano), (counterparty, amount_nano)],
    )
    if journal_id is None:
        raise RuntimeError(f"a {kind} of payment {payment_key} is already in the journal")
    await lots.take(conn, lot[0], amount_nano, journal_id)
    return journal_id
