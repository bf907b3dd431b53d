"""Worker-reported usage is checked against its hold: more tokens than reserved are clamped and
flagged; a record naming another account or route is refused and never charged."""

from __future__ import annotations

from typing import Any

from regio.billing.v1 import billing_pb2
from regio.inference.v1 import inference_pb2
from tests.integration.billing.billing_helpers import (
    LIV_INPUT_NANO_PER_TOKEN,
    LIV_OUTPUT_NANO_PER_TOKEN,
    RunningBilling,
    balance_of,
    fund,
    new_id,
    query,
    reserve,
)
from tests.integration.billing.test_billing_usage_consumer import publish, wait_until_consumed

HOLD_100_50 = 100 * LIV_INPUT_NANO_PER_TOKEN + 50 * LIV_OUTPUT_NANO_PER_TOKEN


def record(
    transaction_id: str, account_id: str, prompt: int, completion: int, route: str = "liv"
) -> bytes:
    return inference_pb2.UsageRecord(
        transaction_id=transaction_id,
        account_id=account_id,
        route=route,
        region="eu",
        country="de",
        worker_id="de-liv-test",
        prompt_tokens=prompt,
        completion_tokens=completion,
        finish_reason=inference_pb2.FINISH_REASON_STOP,
        billable=True,
    ).SerializeToString()


def rejected(billing: RunningBilling, reason: str) -> float:
    value = billing.app.metrics.registry.get_sample_value(
        "regio_billing_usage_rejected_total", {"reason": reason}
    )
    return value or 0.0


async def test_usage_over_the_hold_is_clamped_and_flagged(
    billing: RunningBilling, nats_client: Any
) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)  # 100 prompt + 50 completion tokens

    ack = await publish(nats_client, record(transaction, account, 5_000, 40), transaction)
    await wait_until_consumed(nats_client, ack.seq)

    settled = await query(
        billing.database_url,
        "SELECT prompt_tokens, completion_tokens, charged_nano, usage_over_hold"
        " FROM billing.settlements WHERE transaction_id = %s",
        transaction,
    )
    charge = 100 * LIV_INPUT_NANO_PER_TOKEN + 40 * LIV_OUTPUT_NANO_PER_TOKEN
    assert settled == [(100, 40, charge, True)]
    assert (await balance_of(billing.stub, account)).balance_nano == 1_000_000 - charge
    assert rejected(billing, "over_hold") == 1


async def test_the_settle_rpc_clamps_too(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)

    response = await billing.stub.Settle(
        billing_pb2.SettleRequest(
            transaction_id=transaction, prompt_tokens=50, completion_tokens=900, billable=True
        )
    )

    assert response.charged_nano == 50 * LIV_INPUT_NANO_PER_TOKEN + 50 * LIV_OUTPUT_NANO_PER_TOKEN
    assert await query(
        billing.database_url,
        "SELECT completion_tokens, usage_over_hold FROM billing.settlements",
    ) == [(50, True)]
    assert rejected(billing, "over_hold") == 1


async def test_usage_within_the_hold_is_not_flagged(
    billing: RunningBilling, nats_client: Any
) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)

    ack = await publish(nats_client, record(transaction, account, 100, 50), transaction)
    await wait_until_consumed(nats_client, ack.seq)

    assert await query(
        billing.database_url,
        "SELECT charged_nano, usage_over_hold FROM billing.settlements",
    ) == [(HOLD_100_50, False)]
    assert rejected(billing, "over_hold") == 0


async def test_usage_naming_another_account_or_route_is_refused(
    billing: RunningBilling, nats_client: Any
) -> None:
    account = new_id("acct")
    other_account, other_route = new_id("txn"), new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, other_account)
    await reserve(billing.stub, account, other_route)

    await publish(nats_client, record(other_account, new_id("acct"), 10, 10), other_account)
    ack = await publish(
        nats_client, record(other_route, account, 10, 10, route="nikola"), other_route
    )
    await wait_until_consumed(nats_client, ack.seq)

    balance = await balance_of(billing.stub, account)
    assert (balance.balance_nano, balance.held_nano) == (1_000_000, 2 * HOLD_100_50)
    assert await query(billing.database_url, "SELECT count(*) FROM billing.settlements") == [(0,)]
    assert (rejected(billing, "account_mismatch"), rejected(billing, "route_mismatch")) == (1, 1)
