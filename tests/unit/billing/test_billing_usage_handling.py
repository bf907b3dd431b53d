"""What the usage consumer does with each delivered record: ack, or nak for a retry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from regio.inference.v1 import inference_pb2
from regio_billing.errors import HoldNotFound
from regio_billing.results import SettleResult
from regio_billing.settlement import SettledUsage, SettleOutcome
from regio_billing.usage_consumer import UsageConsumer
from regio_common.usage_stream import usage_message


@dataclass
class DeliveredMessage:
    """Stands in for a JetStream message: records how it was acknowledged."""

    data: bytes
    headers: dict[str, str] | None = None
    subject: str = "regio.usage.liv"
    acks: list[str] = field(default_factory=list)
    nak_delays: list[float | None] = field(default_factory=list)

    async def ack(self) -> None:
        self.acks.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.acks.append("nak")
        self.nak_delays.append(delay)


class RecordingSettle:
    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.calls: list[tuple[str, int, int, bool]] = []

    async def __call__(
        self, transaction_id: str, prompt: int, completion: int, billable: bool
    ) -> SettleResult:
        self.calls.append((transaction_id, prompt, completion, billable))
        if self.failure is not None:
            raise self.failure
        return SettleResult(charged_nano=5_350, already_settled=False)


def usage(transaction_id: str) -> inference_pb2.UsageRecord:
    return inference_pb2.UsageRecord(
        transaction_id=transaction_id,
        route="liv",
        prompt_tokens=100,
        completion_tokens=50,
        billable=True,
    )


def record(transaction_id: str = "txn-1") -> bytes:
    return usage(transaction_id).SerializeToString()


def batch_message(*transaction_ids: str) -> DeliveredMessage:
    _, payload, headers = usage_message([usage(t) for t in transaction_ids])
    return DeliveredMessage(payload, headers)


def consumer(settle: RecordingSettle) -> UsageConsumer:
    js: Any = None  # handle() never touches JetStream
    return UsageConsumer(js, settle, batch=1, fetch_wait_seconds=1.0, retry_delay_seconds=3.0)


async def test_a_settled_record_is_acked() -> None:
    settle = RecordingSettle()
    message = DeliveredMessage(record())

    await consumer(settle).handle(message)

    assert settle.calls == [("txn-1", 100, 50, True)]
    assert message.acks == ["ack"]


@pytest.mark.parametrize(
    "failure",
    [psycopg.OperationalError("connection refused"), RuntimeError("bug")],
)
async def test_a_failed_settlement_is_retried_later(failure: Exception) -> None:
    message = DeliveredMessage(record())

    await consumer(RecordingSettle(failure)).handle(message)

    assert message.acks == ["nak"]
    assert message.nak_delays == [3.0]


async def test_a_record_without_hold_is_acked_so_it_cannot_loop() -> None:
    message = DeliveredMessage(record())

    await consumer(RecordingSettle(HoldNotFound("no hold"))).handle(message)

    assert message.acks == ["ack"]


async def test_a_malformed_record_is_acked_without_settling() -> None:
    settle = RecordingSettle()
    message = DeliveredMessage(b"\xff\xff garbage")

    await consumer(settle).handle(message)

    assert settle.calls == []
    assert message.acks == ["ack"]


async def test_a_batch_message_is_acked_once_all_its_records_are_settled() -> None:
    settle = RecordingSettle()
    message = batch_message("txn-1", "txn-2", "txn-3")

    await consumer(settle).handle(message)

    assert sorted(call[0] for call in settle.calls) == ["txn-1", "txn-2", "txn-3"]
    assert message.acks == ["ack"]


class FailingFor(RecordingSettle):
    """Settles every record but one, whose settlement fails transiently."""

    def __init__(self, failing_transaction: str) -> None:
        super().__init__()
        self.failing_transaction = failing_transaction

    async def __call__(
        self, transaction_id: str, prompt: int, completion: int, billable: bool
    ) -> SettleResult:
        if transaction_id == self.failing_transaction:
            raise psycopg.errors.SerializationFailure("could not serialize")
        return await super().__call__(transaction_id, prompt, completion, billable)


async def test_a_batch_message_with_a_record_to_retry_comes_again_whole() -> None:
    settle = FailingFor("txn-2")
    message = batch_message("txn-1", "txn-2", "txn-3")

    await consumer(settle).handle(message)

    # The others are settled now, and found settled (not charged again) on redelivery.
    assert sorted(call[0] for call in settle.calls) == ["txn-1", "txn-3"]
    assert message.acks == ["nak"]


async def test_a_failed_pull_settles_record_by_record_and_naks_only_the_bad_message() -> None:
    settled: list[str] = []

    async def settle_batch(usages: Any) -> list[Any]:
        if len(usages) > 1:
            raise RuntimeError("a record the pull's statement cannot take")
        (usage,) = usages
        if usage.transaction_id == "txn-4":
            raise psycopg.errors.SerializationFailure("could not serialize")
        settled.append(usage.transaction_id)
        return [SettledUsage(usage, SettleOutcome.SETTLED, 1)]

    js: Any = None
    under_test = UsageConsumer(
        js, RecordingSettle(), batch=8, fetch_wait_seconds=1.0, settle_batch=settle_batch
    )
    good, bad = batch_message("txn-1", "txn-2"), batch_message("txn-3", "txn-4")
    alone = DeliveredMessage(record("txn-5"))

    await under_test.handle_batch([good, bad, alone])

    assert sorted(settled) == ["txn-1", "txn-2", "txn-3", "txn-5"]
    assert (good.acks, bad.acks, alone.acks) == (["ack"], ["nak"], ["ack"])


class ShortPulls:
    """A pull subscription whose first pull brings one record and the next whatever came
    while the consumer lingered."""

    def __init__(self, *pulls: list[DeliveredMessage]) -> None:
        self.pulls = list(pulls)
        self.asked: list[int] = []

    async def fetch(self, batch: int, timeout: float) -> list[DeliveredMessage]:  # noqa: ASYNC109 (nats-py's signature)
        self.asked.append(batch)
        if not self.pulls:
            raise TimeoutError
        return self.pulls.pop(0)


async def test_a_short_pull_lingers_for_more_records_and_settles_them_together() -> None:
    settled: list[list[str]] = []

    async def settle_batch(usages: Any) -> list[Any]:
        settled.append([usage.transaction_id for usage in usages])
        consumer_under_test._stopping = True  # one batch is enough
        return [SettledUsage(usage, SettleOutcome.SETTLED, 1) for usage in usages]

    js: Any = None
    consumer_under_test = UsageConsumer(
        js,
        RecordingSettle(),
        batch=8,
        fetch_wait_seconds=1.0,
        settle_batch=settle_batch,
        linger_seconds=0.01,
    )
    first = [DeliveredMessage(record("txn-1"))]
    came_meanwhile = [DeliveredMessage(record("txn-2")), DeliveredMessage(record("txn-3"))]
    pulls = ShortPulls(first, came_meanwhile)
    consumer_under_test._subscription = pulls
    await consumer_under_test._run()

    assert settled == [["txn-1", "txn-2", "txn-3"]]  # one transaction for the three
    assert pulls.asked[:2] == [8, 7]  # the linger's pull asks for the room left
