"""Every usage record delivered 1-5 times: NATS drops the repeats it can see (same
`Nats-Msg-Id` inside the stream's duplicate window), billing must absorb all the others
(repeats published after the window, or under a new message id, in the same pull or a
later one). Outcome: every hold is charged exactly once, at the exact price.

The test runs its own nats-server with a one-second duplicate window, so that "after the
window" really happens within the test."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from regio_common.subjects import BILLING_USAGE_CONSUMER, USAGE_STREAM
from regio_common.usage_stream import usage_stream_config
from regio_devstack.servers import NatsServer
from tests.integration.billing.billing_helpers import (
    LIV_INPUT_NANO_PER_TOKEN,
    LIV_OUTPUT_NANO_PER_TOKEN,
    RunningBilling,
    balance_of,
    fund,
    new_id,
    query,
    reserve,
    running_billing,
    wait_for,
)
from tests.integration.billing.test_billing_usage_consumer import publish, usage_record

SEED = 4_051
TRANSACTIONS = 300
ACCOUNTS = 6
DUPLICATE_WINDOW_SECONDS = 1.0
CREDIT_NANO = 1_000_000_000


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    client = await nats.connect(server.url)
    try:
        config = usage_stream_config()
        config.duplicate_window = DUPLICATE_WINDOW_SECONDS
        await client.jetstream().add_stream(config)  # before billing: it keeps an existing one
    finally:
        await client.close()
    yield server
    server.stop()


@pytest.fixture
async def billing_on_own_nats(
    fresh_database_url: str, own_nats: NatsServer
) -> AsyncIterator[RunningBilling]:
    async with running_billing(fresh_database_url, own_nats.url) as running:
        yield running


async def test_each_usage_record_is_charged_once_however_often_it_arrives(
    billing_on_own_nats: RunningBilling, own_nats: NatsServer
) -> None:
    billing = billing_on_own_nats
    rng = random.Random(SEED)
    accounts = [new_id("acct") for _ in range(ACCOUNTS)]
    for account in accounts:
        await fund(billing.stub, account, CREDIT_NANO)
    # (transaction, account, prompt tokens, completion tokens, copies)
    plan = [
        (new_id("txn"), rng.choice(accounts), rng.randint(0, 100), rng.randint(0, 50), copies)
        for copies in (rng.randint(1, 5) for _ in range(TRANSACTIONS))
    ]
    await asyncio.gather(*(reserve(billing.stub, account, txn) for txn, account, *_ in plan))

    client = await nats.connect(own_nats.url)
    try:
        counts = await deliver(client, plan, rng)
        js = client.jetstream()
        last = (await js.stream_info(USAGE_STREAM)).state.last_seq

        async def all_acked() -> bool:
            info = await js.consumer_info(USAGE_STREAM, BILLING_USAGE_CONSUMER)
            return bool(info.ack_floor.stream_seq >= last and info.num_ack_pending == 0)

        await wait_for(all_acked, within_seconds=60, what="every stored record acked")
    finally:
        await client.close()

    settlements = dict(
        await query(
            billing.database_url,
            "SELECT transaction_id, charged_nano FROM billing.settlements",
        )
    )
    charges = await query(
        billing.database_url,
        "SELECT reference_key, count(*) FROM billing.journal WHERE kind = 'charge'"
        " GROUP BY reference_key",
    )
    double_charges = sum(1 for _, n in charges if n > 1)
    expected = {
        txn: prompt * LIV_INPUT_NANO_PER_TOKEN + completion * LIV_OUTPUT_NANO_PER_TOKEN
        for txn, _, prompt, completion, _ in plan
    }
    wrong = {txn for txn, price in expected.items() if settlements.get(txn) != price}
    print(
        f"\n{TRANSACTIONS} usage records, {counts['published']} deliveries published"
        f" ({counts['same_id']} same id inside the window, {counts['after_window']} same id"
        f" after it, {counts['new_id']} under a new id); {counts['stored']} stored by the"
        f" stream, {counts['dropped']} dropped by it; {len(settlements)} settlements,"
        f" {double_charges} double charges, {len(wrong)} wrong or missing"
    )
    assert counts["after_window"] > 0 and counts["new_id"] > 0 and counts["dropped"] > 0
    assert counts["stored"] > TRANSACTIONS  # billing really received repeats
    assert double_charges == 0
    assert wrong == set()
    assert len(settlements) == TRANSACTIONS
    for account in accounts:
        spent = sum(expected[txn] for txn, owner, *_ in plan if owner == account)
        balance = await balance_of(billing.stub, account)
        assert (balance.balance_nano, balance.held_nano) == (CREDIT_NANO - spent, 0)


async def deliver(
    client: Any, plan: list[tuple[str, str, int, int, int]], rng: random.Random
) -> dict[str, int]:
    """Publish each record `copies` times: the first like a worker does, repeats in three ways.
    Two rounds: repeats of the second kind wait until the duplicate window has passed."""
    counts = dict.fromkeys(("published", "same_id", "after_window", "new_id", "stored"), 0)
    stored_seqs: set[int] = set()
    later: list[tuple[bytes, str]] = []

    async def send(payload: bytes, message_id: str, kind: str | None) -> None:
        ack = await publish(client, payload, message_id)
        counts["published"] += 1
        if kind is not None:
            counts[kind] += 1
        if not ack.duplicate:
            stored_seqs.add(ack.seq)

    order = list(plan)
    rng.shuffle(order)
    for txn, account, prompt, completion, copies in order:
        payload = usage_record(txn, account, prompt, completion)
        await send(payload, txn, None)
        for _ in range(copies - 1):
            kind = rng.choice(["same_id", "after_window", "new_id"])
            if kind == "same_id":  # a worker retrying its publish: NATS drops it
                await send(payload, txn, kind)
            elif kind == "new_id":  # a republish NATS cannot recognise
                await send(payload, new_id("msg"), kind)
            else:
                later.append((payload, txn))
    await asyncio.sleep(DUPLICATE_WINDOW_SECONDS + 0.5)
    rng.shuffle(later)
    for payload, txn in later:  # the same id again, once NATS has forgotten it
        await send(payload, txn, "after_window")
    counts["stored"] = len(stored_seqs)
    counts["dropped"] = counts["published"] - counts["stored"]
    return counts
