"""The ledger driven directly: sweeping and the invariant checks themselves."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from regio_billing.ledger import Ledger
from regio_billing.results import ReserveOutcome
from tests.integration.billing.billing_helpers import new_id


async def hold(ledger: Ledger, account_id: str, ttl_seconds: int) -> str:
    transaction_id = new_id("txn")
    result = await ledger.reserve(
        transaction_id=transaction_id,
        account_id=account_id,
        route="liv",
        region="eu",
        max_prompt_tokens=100,
        max_completion_tokens=50,
        ttl_seconds=ttl_seconds,
    )
    assert result.outcome == ReserveOutcome.HELD
    return transaction_id


async def test_sweep_releases_only_expired_holds(ledger: Ledger) -> None:
    first, second = new_id("acct"), new_id("acct")
    await ledger.add_credits(first, 1_000_000, new_id("pay"), "")
    await ledger.add_credits(second, 1_000_000, new_id("pay"), "")
    for account in (first, second, first):
        await hold(ledger, account, ttl_seconds=1)
    lasting = await hold(ledger, first, ttl_seconds=600)

    assert await ledger.sweep_expired_holds() == 0
    await asyncio.sleep(1.1)
    assert await ledger.sweep_expired_holds() == 3
    assert await ledger.sweep_expired_holds() == 0

    assert (await ledger.get_balance(first)).held_nano == 5_350
    assert (await ledger.get_balance(second)).held_nano == 0
    assert await ledger.release(lasting, "test") is True
    assert await ledger.check_invariants() == []


async def test_invariant_checks_notice_corruption(ledger: Ledger, fresh_database_url: str) -> None:
    account = new_id("acct")
    await ledger.add_credits(account, 1_000_000, new_id("pay"), "")
    transaction = await hold(ledger, account, ttl_seconds=600)
    await ledger.settle(transaction, 100, 50, True)
    assert await ledger.check_invariants() == []

    async with await psycopg.AsyncConnection.connect(fresh_database_url, autocommit=True) as conn:
        # Break the caches behind the ledger's back, as a bug would.
        await conn.execute(
            "UPDATE billing.accounts SET balance_nano = balance_nano + 1, held_nano = held_nano + 1"
            " WHERE account_id = %s",
            (account,),
        )
        await conn.execute(
            "UPDATE billing.settlements SET charged_nano = 999999 WHERE transaction_id = %s",
            (transaction,),
        )

    violations = await ledger.check_invariants()
    # The balance no longer matches its lots either (I8).
    assert {v.split(":")[0] for v in violations} == {"I1", "I3", "I6", "I7", "I8"}


async def test_the_database_refuses_an_unbalanced_journal_entry(fresh_database_url: str) -> None:
    from regio_billing.database import migrate

    await migrate(fresh_database_url)
    async with await psycopg.AsyncConnection.connect(fresh_database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            async with conn.transaction():
                cursor = await conn.execute(
                    "INSERT INTO billing.journal (kind, reference_key) VALUES ('payment', 'k')"
                    " RETURNING id"
                )
                row = await cursor.fetchone()
                assert row is not None
                await conn.execute(
                    "INSERT INTO billing.postings (journal_id, ledger_account, amount_nano)"
                    " VALUES (%s, 'customer:x', 10)",
                    (row[0],),
                )
