"""1,000 Reserve calls at once over real gRPC against an account that can afford exactly K of
them: exactly K are held, the rest refused, and the account is never overdrawn — not at the
end and not at any moment a client could observe while the calls are running."""

from __future__ import annotations

import asyncio
from typing import Any

from regio.billing.v1 import billing_pb2
from tests.integration.billing.billing_helpers import (
    RunningBilling,
    balance_of,
    fund,
    new_id,
    query,
    reserve,
)

CALLS = 1_000
AFFORDABLE = 137
# Route liv, 100 prompt + 50 completion tokens at most: 100 x 29 + 50 x 49 nano-EUR.
HOLD_NANO = 5_350


async def test_parallel_reserves_hold_exactly_what_the_credit_covers(
    billing: RunningBilling,
) -> None:
    account = new_id("acct")
    await fund(billing.stub, account, AFFORDABLE * HOLD_NANO)
    observed: list[Any] = []
    storm_over = asyncio.Event()

    async def watch_balance() -> None:
        while not storm_over.is_set():
            observed.append(await balance_of(billing.stub, account))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch_balance())
    try:
        responses = await asyncio.gather(
            *(reserve(billing.stub, account, new_id("txn")) for _ in range(CALLS))
        )
    finally:
        storm_over.set()
        await watcher

    outcomes = [response.outcome for response in responses]
    held = outcomes.count(billing_pb2.RESERVE_OUTCOME_HELD)
    refused = outcomes.count(billing_pb2.RESERVE_OUTCOME_INSUFFICIENT_FUNDS)
    print(
        f"\n{CALLS} parallel reserves, credit for {AFFORDABLE}: {held} held, {refused} refused;"
        f" {len(observed)} balance reads during the storm"
    )
    assert (held, refused) == (AFFORDABLE, CALLS - AFFORDABLE)
    assert all(r.held_nano == HOLD_NANO for r in responses if r.held_nano)
    assert all(r.available_nano >= 0 for r in responses)
    assert observed, "the balance was never read while the reserves ran"
    assert all(b.available_nano >= 0 and b.held_nano >= 0 for b in observed)
    assert all(b.held_nano <= b.balance_nano for b in observed)

    final = await balance_of(billing.stub, account)
    assert (final.balance_nano, final.held_nano, final.available_nano) == (
        AFFORDABLE * HOLD_NANO,
        AFFORDABLE * HOLD_NANO,
        0,
    )
    rows = await query(
        billing.database_url,
        "SELECT count(*), coalesce(sum(amount_nano), 0) FROM billing.holds"
        " WHERE account_id = %s AND status = 'open'",
        account,
    )
    assert rows == [(AFFORDABLE, AFFORDABLE * HOLD_NANO)]
    # Concurrent holds of the one account shared statements: fewer statements than holds.
    registry = billing.app.metrics.registry
    holds_written = registry.get_sample_value("regio_billing_holds_per_statement_sum")
    statements = registry.get_sample_value("regio_billing_holds_per_statement_count")
    assert holds_written == AFFORDABLE
    assert statements is not None and statements < AFFORDABLE
    # One more is refused: the credit is used up, not merely contended.
    late = await reserve(billing.stub, account, new_id("txn"))
    assert late.outcome == billing_pb2.RESERVE_OUTCOME_INSUFFICIENT_FUNDS
    # (the billing fixture checks I1-I8 after the test)


async def test_parallel_reserves_of_one_transaction_hold_once(billing: RunningBilling) -> None:
    """A gateway retrying Reserve while the first call is still running: one hold, every call
    answered with it, the credit held once."""
    account, transaction = new_id("acct"), new_id("txn")
    await fund(billing.stub, account, 10 * HOLD_NANO)

    responses = await asyncio.gather(
        *(reserve(billing.stub, account, transaction) for _ in range(50))
    )

    assert {(r.outcome, r.held_nano) for r in responses} == {
        (billing_pb2.RESERVE_OUTCOME_HELD, HOLD_NANO)
    }
    balance = await balance_of(billing.stub, account)
    assert (balance.held_nano, balance.available_nano) == (HOLD_NANO, 9 * HOLD_NANO)
    rows = await query(
        billing.database_url,
        "SELECT count(*) FROM billing.holds WHERE transaction_id = %s",
        transaction,
    )
    assert rows == [(1,)]
