"""Double-entry journal: ledger account names and writing one balanced entry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

CUSTOMER_PREFIX = "customer:"
REVENUE_ACCOUNT = "revenue"
PAYMENTS_ACCOUNT = "payments"
# The counterparty of promotional credit: bonuses granted and bonuses clawed back.
PROMOTIONS_ACCOUNT = "promotions"

JournalKind = Literal["payment", "charge", "promotion", "refund", "clawback"]


def customer_ledger_account(account_id: str) -> str:
    return f"{CUSTOMER_PREFIX}{account_id}"


async def post_entry(
    conn: AsyncConnection[TupleRow],
    *,
    kind: JournalKind,
    reference_key: str,
    memo: str,
    postings: Sequence[tuple[str, int]],
) -> int | None:
    """Write one journal entry with its postings; returns its id, or None when an entry of
    this kind and reference key already exists (the caller is a duplicate).

    Must run inside the caller's transaction, together with the cache updates it explains."""
    if sum(amount for _, amount in postings) != 0:
        raise ValueError(f"unbalanced journal entry for {kind} {reference_key}: {postings}")
    cursor = await conn.execute(
        "INSERT INTO billing.journal (kind, reference_key, memo) VALUES (%s, %s, %s)"
        " ON CONFLICT (kind, reference_key) DO NOTHING RETURNING id",
        (kind, reference_key, memo),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    journal_id: int = row[0]
    # One statement for all postings: the balance trigger checks each INSERT statement.
    accounts = [account for account, amount in postings if amount != 0]
    amounts = [amount for _, amount in postings if amount != 0]
    await conn.execute(
        "INSERT INTO billing.postings (journal_id, ledger_account, amount_nano)"
        " SELECT %s, * FROM unnest(%b::text[], %b::bigint[])",
        (journal_id, accounts, amounts),
    )
    return journal_id
