"""The Billing gRPC API against real PostgreSQL: holds, settlement, release, payments."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from regio.billing.v1 import billing_pb2
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

HELD = billing_pb2.RESERVE_OUTCOME_HELD
INSUFFICIENT = billing_pb2.RESERVE_OUTCOME_INSUFFICIENT_FUNDS
# The worst case of a reserve(max_prompt_tokens=100, max_completion_tokens=50) on route liv.
HOLD_100_50 = 100 * LIV_INPUT_NANO_PER_TOKEN + 50 * LIV_OUTPUT_NANO_PER_TOKEN


async def settle(
    billing: RunningBilling,
    transaction_id: str,
    prompt: int,
    completion: int,
    billable: bool = True,
) -> billing_pb2.SettleResponse:
    response: billing_pb2.SettleResponse = await billing.stub.Settle(
        billing_pb2.SettleRequest(
            transaction_id=transaction_id,
            prompt_tokens=prompt,
            completion_tokens=completion,
            billable=billable,
        )
    )
    return response


async def test_reserve_holds_the_worst_case_price(billing: RunningBilling) -> None:
    account = new_id("acct")
    await fund(billing.stub, account, 1_000_000)

    response = await reserve(billing.stub, account, new_id("txn"))

    assert HOLD_100_50 == 5_350
    assert response.outcome == HELD
    assert response.held_nano == 5_350
    assert response.available_nano == 1_000_000 - 5_350
    balance = await balance_of(billing.stub, account)
    assert (balance.balance_nano, balance.held_nano, balance.available_nano) == (
        1_000_000,
        5_350,
        994_650,
    )


async def test_reserve_refuses_what_the_credit_does_not_cover(billing: RunningBilling) -> None:
    account = new_id("acct")
    await fund(billing.stub, account, HOLD_100_50 - 1)

    short = await reserve(billing.stub, account, new_id("txn"))
    unknown_account = await reserve(billing.stub, new_id("nobody"), new_id("txn"))

    assert (short.outcome, short.held_nano, short.available_nano) == (
        INSUFFICIENT,
        0,
        HOLD_100_50 - 1,
    )
    assert (unknown_account.outcome, unknown_account.available_nano) == (INSUFFICIENT, 0)
    assert (await balance_of(billing.stub, account)).held_nano == 0
    assert await query(billing.database_url, "SELECT count(*) FROM billing.holds") == [(0,)]


async def test_reserve_on_an_unknown_route(billing: RunningBilling) -> None:
    account = new_id("acct")
    await fund(billing.stub, account, 1_000_000)

    response = await reserve(billing.stub, account, new_id("txn"), route="no-such-route")

    assert response.outcome == billing_pb2.RESERVE_OUTCOME_UNKNOWN_ROUTE
    assert (await balance_of(billing.stub, account)).held_nano == 0


async def test_reserve_many_answers_each_reserve_as_reserve_would_in_order(
    billing: RunningBilling,
) -> None:
    account, poor = new_id("acct"), new_id("acct")
    await fund(billing.stub, account, 3 * HOLD_100_50)
    await fund(billing.stub, poor, HOLD_100_50 - 1)

    def one(account_id: str, transaction_id: str, route: str = "liv") -> billing_pb2.ReserveRequest:
        return billing_pb2.ReserveRequest(
            transaction_id=transaction_id,
            account_id=account_id,
            route=route,
            region="eu",
            max_prompt_tokens=100,
            max_completion_tokens=50,
            ttl_seconds=60,
        )

    requests = [
        one(account, new_id("txn")),
        one(poor, new_id("txn")),
        one(account, new_id("txn"), route="no-such-route"),
        one(account, ""),  # invalid: Reserve would answer INVALID_ARGUMENT
        one(account, new_id("txn")),
    ]
    answer = await billing.stub.ReserveMany(billing_pb2.ReserveManyRequest(requests=requests))

    assert [response.outcome for response in answer.responses] == [
        HELD,
        INSUFFICIENT,
        billing_pb2.RESERVE_OUTCOME_UNKNOWN_ROUTE,
        billing_pb2.RESERVE_OUTCOME_UNSPECIFIED,
        HELD,
    ]
    assert (await balance_of(billing.stub, account)).held_nano == 2 * HOLD_100_50
    assert (await balance_of(billing.stub, poor)).held_nano == 0


async def test_reserve_is_idempotent_per_transaction(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)

    first = await reserve(billing.stub, account, transaction)
    again = await asyncio.gather(*(reserve(billing.stub, account, transaction) for _ in range(5)))

    assert first.outcome == HELD
    assert all((r.outcome, r.held_nano) == (HELD, HOLD_100_50) for r in again)
    assert (await balance_of(billing.stub, account)).held_nano == HOLD_100_50


async def test_a_transaction_id_cannot_hold_for_two_accounts(billing: RunningBilling) -> None:
    first, second = new_id("acct"), new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, first, 1_000_000)
    await fund(billing.stub, second, 1_000_000)
    await reserve(billing.stub, first, transaction)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reserve(billing.stub, second, transaction)

    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await balance_of(billing.stub, second)).held_nano == 0


async def test_settle_charges_exactly_the_reported_tokens(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(
        billing.stub, account, transaction, max_prompt_tokens=1000, max_completion_tokens=500
    )

    settled = await settle(billing, transaction, prompt=100, completion=50)

    assert (settled.charged_nano, settled.already_settled) == (5_350, False)
    balance = await balance_of(billing.stub, account)
    assert (balance.balance_nano, balance.held_nano) == (1_000_000 - 5_350, 0)
    postings = await query(
        billing.database_url,
        "SELECT p.ledger_account, p.amount_nano FROM billing.postings p"
        " JOIN billing.journal j ON j.id = p.journal_id"
        " WHERE j.kind = 'charge' AND j.reference_key = %s ORDER BY p.amount_nano",
        transaction,
    )
    assert postings == [(f"customer:{account}", -5_350), ("revenue", 5_350)]


async def test_settling_twice_charges_once(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)

    first = await settle(billing, transaction, prompt=100, completion=50)
    second = await settle(billing, transaction, prompt=100, completion=50)
    concurrent = await asyncio.gather(
        *(settle(billing, transaction, prompt=100, completion=50) for _ in range(10))
    )

    assert (first.charged_nano, first.already_settled) == (5_350, False)
    assert (second.charged_nano, second.already_settled) == (5_350, True)
    assert all((r.charged_nano, r.already_settled) == (5_350, True) for r in concurrent)
    assert (await balance_of(billing.stub, account)).balance_nano == 1_000_000 - 5_350
    assert await query(billing.database_url, "SELECT count(*) FROM billing.settlements") == [(1,)]


async def test_concurrent_first_settlements_charge_once(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)

    results = await asyncio.gather(
        *(settle(billing, transaction, prompt=100, completion=50) for _ in range(10))
    )

    assert sorted(r.already_settled for r in results) == [False] + [True] * 9
    assert {r.charged_nano for r in results} == {5_350}
    assert (await balance_of(billing.stub, account)).balance_nano == 1_000_000 - 5_350


async def test_a_non_billable_request_costs_nothing(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)

    settled = await settle(billing, transaction, prompt=100, completion=50, billable=False)

    assert settled.charged_nano == 0
    balance = await balance_of(billing.stub, account)
    assert (balance.balance_nano, balance.held_nano) == (1_000_000, 0)
    assert await query(
        billing.database_url, "SELECT count(*) FROM billing.journal WHERE kind = 'charge'"
    ) == [(0,)]


async def test_the_charge_never_exceeds_the_hold(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    held = await reserve(
        billing.stub, account, transaction, max_prompt_tokens=10, max_completion_tokens=10
    )

    settled = await settle(billing, transaction, prompt=100, completion=100)

    assert held.held_nano == 10 * 29 + 10 * 49
    assert settled.charged_nano == held.held_nano
    assert (await balance_of(billing.stub, account)).balance_nano == 1_000_000 - held.held_nano


async def test_settling_an_unknown_transaction_is_not_found(billing: RunningBilling) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await settle(billing, new_id("txn"), prompt=1, completion=1)

    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_release_gives_the_hold_back_once(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)

    first = await billing.stub.Release(
        billing_pb2.ReleaseRequest(transaction_id=transaction, reason="worker_rejected")
    )
    second = await billing.stub.Release(
        billing_pb2.ReleaseRequest(transaction_id=transaction, reason="worker_rejected")
    )
    unknown = await billing.stub.Release(billing_pb2.ReleaseRequest(transaction_id=new_id("txn")))
    late_usage = await settle(billing, transaction, prompt=100, completion=50)

    assert (first.released, second.released, unknown.released) == (True, False, False)
    assert (late_usage.charged_nano, late_usage.already_settled) == (0, False)
    balance = await balance_of(billing.stub, account)
    assert (balance.balance_nano, balance.held_nano) == (1_000_000, 0)


async def test_a_settled_hold_cannot_be_released(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction)
    await settle(billing, transaction, prompt=100, completion=50)

    released = await billing.stub.Release(billing_pb2.ReleaseRequest(transaction_id=transaction))

    assert released.released is False
    assert (await balance_of(billing.stub, account)).balance_nano == 1_000_000 - 5_350


async def test_add_credits_is_idempotent_per_key(billing: RunningBilling) -> None:
    account = new_id("acct")
    request = billing_pb2.AddCreditsRequest(
        account_id=account, amount_nano=2_000, idempotency_key=new_id("pay"), reference="invoice 1"
    )

    first = await billing.stub.AddCredits(request)
    repeats = await asyncio.gather(*(billing.stub.AddCredits(request) for _ in range(5)))

    assert first.balance_nano == 2_000
    assert {r.balance_nano for r in repeats} == {2_000}
    assert await query(
        billing.database_url, "SELECT count(*) FROM billing.payments WHERE account_id = %s", account
    ) == [(1,)]


async def test_add_credits_refuses_a_reused_key_and_bad_amounts(billing: RunningBilling) -> None:
    account = new_id("acct")
    key = new_id("pay")
    await billing.stub.AddCredits(
        billing_pb2.AddCreditsRequest(account_id=account, amount_nano=2_000, idempotency_key=key)
    )

    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await billing.stub.AddCredits(
            billing_pb2.AddCreditsRequest(
                account_id=account, amount_nano=9_999, idempotency_key=key
            )
        )
    for amount in (0, -5):
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await billing.stub.AddCredits(
                billing_pb2.AddCreditsRequest(
                    account_id=account, amount_nano=amount, idempotency_key=new_id("pay")
                )
            )
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await balance_of(billing.stub, account)).balance_nano == 2_000


async def test_balance_of_an_unknown_account_is_zero(billing: RunningBilling) -> None:
    balance = await balance_of(billing.stub, new_id("nobody"))

    assert (balance.balance_nano, balance.held_nano, balance.available_nano) == (0, 0, 0)
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await balance_of(billing.stub, "")
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_reserves_never_overdraw(billing: RunningBilling) -> None:
    account = new_id("acct")
    await fund(billing.stub, account, 10 * HOLD_100_50)

    responses = await asyncio.gather(
        *(reserve(billing.stub, account, new_id("txn")) for _ in range(50))
    )

    outcomes = [r.outcome for r in responses]
    assert outcomes.count(HELD) == 10
    assert outcomes.count(INSUFFICIENT) == 40
    assert all(r.available_nano >= 0 for r in responses)
    balance = await balance_of(billing.stub, account)
    assert (balance.held_nano, balance.available_nano) == (10 * HOLD_100_50, 0)


async def test_the_sweeper_releases_an_expired_hold(billing: RunningBilling) -> None:
    account = new_id("acct")
    transaction = new_id("txn")
    await fund(billing.stub, account, 1_000_000)
    await reserve(billing.stub, account, transaction, ttl_seconds=1)
    assert (await balance_of(billing.stub, account)).held_nano == HOLD_100_50

    async def hold_swept() -> bool:
        return (await balance_of(billing.stub, account)).held_nano == 0

    await wait_for(hold_swept, within_seconds=5, what="the expired hold is swept")

    rows = await query(
        billing.database_url,
        "SELECT status, release_reason FROM billing.holds WHERE transaction_id = %s",
        transaction,
    )
    assert rows == [("released", "expired")]
    late_usage = await settle(billing, transaction, prompt=100, completion=50)
    assert late_usage.charged_nano == 0
    assert (await balance_of(billing.stub, account)).balance_nano == 1_000_000
