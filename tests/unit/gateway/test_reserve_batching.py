"""The gateway's Reserves share gRPC calls: alone when nothing is in flight, together in one
ReserveMany while a call is, each answered with its own response or its call's error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import pytest

from regio.billing.v1 import billing_pb2
from regio_common.config_records import UsageLimits
from regio_gateway.billing_client import BillingClient
from regio_gateway.metrics import GatewayMetrics
from regio_gateway.reserve_batching import ReserveBatcher


def reserve_request(transaction_id: str) -> billing_pb2.ReserveRequest:
    return billing_pb2.ReserveRequest(transaction_id=transaction_id, account_id="acct")


def held(request: billing_pb2.ReserveRequest) -> billing_pb2.ReserveResponse:
    """A response that names its request (held_nano = the transaction's number)."""
    return billing_pb2.ReserveResponse(
        outcome=billing_pb2.RESERVE_OUTCOME_HELD,
        held_nano=int(request.transaction_id.removeprefix("txn-")),
    )


class Billing:
    """Records the calls; each call waits until the test opens the gate."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.failure: Exception | None = None
        self.answers_short = False

    async def reserve_one(self, request: billing_pb2.ReserveRequest) -> billing_pb2.ReserveResponse:
        self.calls.append([request.transaction_id])
        await self.gate.wait()
        return held(request)

    async def reserve_many(
        self, requests: Sequence[billing_pb2.ReserveRequest]
    ) -> list[billing_pb2.ReserveResponse]:
        self.calls.append([request.transaction_id for request in requests])
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        answers = [held(request) for request in requests]
        return answers[:-1] if self.answers_short else answers


Reserving = asyncio.Task[billing_pb2.ReserveResponse]


async def started(batcher: ReserveBatcher, *numbers: int) -> list[Reserving]:
    tasks: list[Reserving] = [
        asyncio.create_task(batcher.reserve(reserve_request(f"txn-{n}"))) for n in numbers
    ]
    await asyncio.sleep(0)  # each has asked
    return tasks


async def test_a_reserve_alone_is_a_plain_call_and_the_next_ones_share_one() -> None:
    billing = Billing()
    batcher = ReserveBatcher(billing.reserve_one, billing.reserve_many)

    tasks = await started(batcher, 1, 2, 3, 4)
    assert billing.calls == [["txn-1"]]  # the others wait for it
    billing.gate.set()
    answers = await asyncio.gather(*tasks)

    assert billing.calls == [["txn-1"], ["txn-2", "txn-3", "txn-4"]]
    assert [answer.held_nano for answer in answers] == [1, 2, 3, 4]  # each its own


async def test_a_call_carries_at_most_its_limit() -> None:
    billing = Billing()
    batcher = ReserveBatcher(billing.reserve_one, billing.reserve_many, max_per_call=2)

    tasks = await started(batcher, 1, 2, 3, 4, 5)
    billing.gate.set()
    await asyncio.gather(*tasks)

    assert billing.calls == [["txn-1"], ["txn-2", "txn-3"], ["txn-4", "txn-5"]]


@pytest.mark.parametrize("short", [False, True])
async def test_a_failed_call_fails_each_of_its_reserves_and_the_next_call_goes(
    short: bool,
) -> None:
    billing = Billing()
    batcher = ReserveBatcher(billing.reserve_one, billing.reserve_many)
    if short:
        billing.answers_short = True  # fewer answers than Reserves: none can be trusted
    else:
        billing.failure = ConnectionError("billing went away")
    tasks = await started(batcher, 1, 2, 3)
    billing.gate.set()

    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(results[0], billing_pb2.ReserveResponse) and results[0].held_nano == 1
    assert all(isinstance(result, Exception) for result in results[1:])
    billing.failure, billing.answers_short = None, False
    assert (await batcher.reserve(reserve_request("txn-9"))).held_nano == 9


async def test_a_reserve_whose_request_left_is_not_sent() -> None:
    billing = Billing()
    batcher = ReserveBatcher(billing.reserve_one, billing.reserve_many)
    tasks = await started(batcher, 1, 2, 3)
    tasks[1].cancel()  # its client went away while it waited
    billing.gate.set()

    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert billing.calls == [["txn-1"], ["txn-3"]]
    assert isinstance(results[1], asyncio.CancelledError)
    assert isinstance(results[2], billing_pb2.ReserveResponse) and results[2].held_nano == 3


class EarlierBilling:
    """A billing of an earlier version: no ReserveMany; its Reserves wait for the gate."""

    def __init__(self) -> None:
        self.reserves: list[str] = []
        self.gate = asyncio.Event()

    async def Reserve(
        self, request: billing_pb2.ReserveRequest, **options: object
    ) -> billing_pb2.ReserveResponse:
        self.reserves.append(request.transaction_id)
        await self.gate.wait()
        return held(request)

    async def ReserveMany(
        self, request: billing_pb2.ReserveManyRequest, **options: object
    ) -> billing_pb2.ReserveManyResponse:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "unknown"
        )


async def test_the_gateway_reserves_one_by_one_with_a_billing_without_reserve_many() -> None:
    billing = BillingClient("127.0.0.1:9", 1.0, token="", metrics=GatewayMetrics())
    earlier = EarlierBilling()
    billing._stub = earlier  # type: ignore[assignment]  # the channel is never used

    async def hold(number: int) -> billing_pb2.ReserveResponse:
        return await billing.reserve(
            transaction_id=f"txn-{number}",
            account_id="acct",
            route="liv",
            region="eu",
            max_prompt_tokens=10,
            max_completion_tokens=10,
            ttl_seconds=60,
            key_id="key",
            key_limits=UsageLimits(),
            account_limits=UsageLimits(),
        )

    holds = [asyncio.create_task(hold(number)) for number in (1, 2, 3)]
    await asyncio.sleep(0)
    earlier.gate.set()
    answers = await asyncio.gather(*holds)

    assert [answer.held_nano for answer in answers] == [1, 2, 3]
    assert sorted(earlier.reserves) == ["txn-1", "txn-2", "txn-3"]
