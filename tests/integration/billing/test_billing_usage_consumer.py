"""Usage records published to the real JetStream settle holds exactly once."""

from __future__ import annotations

from typing import Any

from regio.inference.v1 import inference_pb2
from regio_common.subjects import BILLING_USAGE_CONSUMER, USAGE_STREAM, usage_subject
from regio_common.usage_stream import usage_message
from tests.integration.billing.billing_helpers import (
    LIV_INPUT_NANO_PER_TOKEN,
    LIV_OUTPUT_NANO_PER_TOKEN,
    RunningBilling,
    balance_of,
    fund,
    new_id,
    query,
    reserve,
    wait_for,
)


def usage_record(
    transaction_id: str, account_id: str, prompt: int, completion: int, billable: bool = True
) -> bytes:
    return inference_pb2.UsageRecord(
        transaction_id=transaction_id,
        account_id=account_id,
        route="liv",
        region="eu",
        country="de",
        worker_id="de-liv-test",
        prompt_tokens=prompt,
        completion_tokens=completion,
        finish_reason=inference_pb2.FINISH_REASON_STOP,
        billable=billable,
        finished_unix_ms=1_767_225_600_000,
    ).SerializeToString()


async def publish(nats_client: Any, payload: bytes, message_id: str) -> Any:
    """Publish like a worker does; returns JetStream's PubAck."""
    return await nats_client.jetstream().publish(
        usage_subject("liv"), payload, headers={"Nats-Msg-Id": message_id}
    )


async def wait_until_consumed(nats_client: Any, stream_sequence: int) -> None:
    """Until billing's durable consumer acked every record up to `stream_sequence`."""
    js = nats_client.jetstream()

    async def acked() -> bool:
        info = await js.consumer_info(USAGE_STREAM, BILLING_USAGE_CONSUMER)
        return bool(info.ack_floor.stream_seq >= stream_sequence)

    await wait_for(acked, within_seconds=10, what=f"usage records up to #{stream_sequence} acked")


async def test_a_published_usage_record_settles_the_hold(
    billing: RunningBilling, nats_client: Any
) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    held = await reserve(billing.stub, account, transaction, max_completion_tokens=256)
    assert (await balance_of(billing.stub, account)).held_nano == held.held_nano > 0

    await publish(nats_client, usage_record(transaction, account, 100, 50), transaction)

    async def settled() -> bool:
        return (await balance_of(billing.stub, account)).held_nano == 0

    await wait_for(settled, within_seconds=10, what="the hold is settled from JetStream")
    price = 100 * LIV_INPUT_NANO_PER_TOKEN + 50 * LIV_OUTPUT_NANO_PER_TOKEN
    assert price == 5_350
    balance = await balance_of(billing.stub, account)
    assert (balance.balance_nano, balance.available_nano) == (1_000_000 - price, 1_000_000 - price)


async def test_duplicate_usage_records_charge_once(
    billing: RunningBilling, nats_client: Any
) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)
    payload = usage_record(transaction, account, 100, 50)

    # A worker retrying its publish: the stream itself drops the repeats.
    same_id = [await publish(nats_client, payload, transaction) for _ in range(3)]
    # Republished outside the duplicate window (new message ids): billing must absorb them.
    new_ids = [await publish(nats_client, payload, new_id("msg")) for _ in range(3)]
    await wait_until_consumed(nats_client, new_ids[-1].seq)

    assert [bool(ack.duplicate) for ack in same_id] == [False, True, True]
    assert len({ack.seq for ack in same_id}) == 1
    assert len({ack.seq for ack in new_ids}) == 3
    rows = await query(
        billing.database_url,
        "SELECT charged_nano FROM billing.settlements WHERE transaction_id = %s",
        transaction,
    )
    assert rows == [(5_350,)]
    assert (await balance_of(billing.stub, account)).balance_nano == 1_000_000 - 5_350


async def test_a_batch_of_records_in_one_message_settles_each_hold_once(
    billing: RunningBilling, nats_client: Any
) -> None:
    account = new_id("acct")
    transactions = [new_id("txn") for _ in range(3)]
    await fund(billing.stub, account, 1_000_000)
    for transaction in transactions:
        await reserve(billing.stub, account, transaction)
    records = [
        inference_pb2.UsageRecord.FromString(usage_record(transaction, account, 100, 50))
        for transaction in transactions
    ]
    subject, payload, headers = usage_message(records)

    # Published twice, as a worker whose acknowledgement was lost: the stream drops the repeat.
    js = nats_client.jetstream()
    acks = [await js.publish(subject, payload, headers=headers) for _ in range(2)]
    assert [bool(ack.duplicate) for ack in acks] == [False, True]
    await wait_until_consumed(nats_client, acks[0].seq)

    rows = await query(
        billing.database_url,
        "SELECT transaction_id, charged_nano FROM billing.settlements"
        " WHERE transaction_id = ANY(%s) ORDER BY transaction_id",
        transactions,
    )
    assert rows == [(transaction, 5_350) for transaction in sorted(transactions)]
    balance = await balance_of(billing.stub, account)
    assert (balance.balance_nano, balance.held_nano) == (1_000_000 - 3 * 5_350, 0)


async def test_unsettleable_records_are_acked_not_looped(
    billing: RunningBilling, nats_client: Any
) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)

    await publish(nats_client, b"\xff\xff not a protobuf", new_id("msg"))
    await publish(nats_client, usage_record("", account, 1, 1), new_id("msg"))
    await publish(nats_client, usage_record(new_id("never-held"), account, 1, 1), new_id("msg"))
    good = await publish(nats_client, usage_record(transaction, account, 100, 50), transaction)
    await wait_until_consumed(nats_client, good.seq)

    info = await nats_client.jetstream().consumer_info(USAGE_STREAM, BILLING_USAGE_CONSUMER)
    assert info.num_ack_pending == 0
    assert info.num_pending == 0
    assert (await balance_of(billing.stub, account)).balance_nano == 1_000_000 - 5_350
    assert await query(billing.database_url, "SELECT count(*) FROM billing.settlements") == [(1,)]
