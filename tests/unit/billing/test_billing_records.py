"""Parsing usage records from JetStream messages: one record alone, or a batch."""

from __future__ import annotations

import pytest

from regio.inference.v1 import inference_pb2
from regio_billing.records import MalformedUsageRecord, parse_usage_message
from regio_common.usage_stream import USAGE_BATCH_HEADER, usage_message


def usage(transaction_id: str, prompt: int = 100) -> inference_pb2.UsageRecord:
    return inference_pb2.UsageRecord(
        transaction_id=transaction_id,
        route="liv",
        prompt_tokens=prompt,
        completion_tokens=50,
        billable=True,
    )


def test_a_record_round_trips() -> None:
    payload = usage("txn-1").SerializeToString()

    (record,) = parse_usage_message(payload)

    assert (record.transaction_id, record.prompt_tokens, record.completion_tokens) == (
        "txn-1",
        100,
        50,
    )
    assert record.billable


def test_a_batch_round_trips_in_order() -> None:
    subject, payload, headers = usage_message([usage("txn-1", 1), usage("txn-2", 2)])

    records = parse_usage_message(payload, headers)

    assert subject == "regio.usage.liv"
    assert [(r.transaction_id, r.prompt_tokens) for r in records] == [("txn-1", 1), ("txn-2", 2)]


def test_a_record_alone_is_published_as_a_plain_record() -> None:
    _, payload, headers = usage_message([usage("txn-1")])

    assert headers == {"Nats-Msg-Id": "txn-1"}
    assert inference_pb2.UsageRecord.FromString(payload).transaction_id == "txn-1"


BATCH = {USAGE_BATCH_HEADER: "2"}


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        (b"\xff\xff not a protobuf", None),
        (b"", None),  # parses, but names no transaction
        (inference_pb2.UsageRecord(prompt_tokens=5).SerializeToString(), None),
        (b"\xff\xff not a protobuf", BATCH),
        (b"", BATCH),  # a batch of nothing
        (inference_pb2.UsageBatch(records=[usage("txn-1"), usage("")]).SerializeToString(), BATCH),
    ],
)
def test_unsettleable_payloads_are_malformed(
    payload: bytes, headers: dict[str, str] | None
) -> None:
    with pytest.raises(MalformedUsageRecord):
        parse_usage_message(payload, headers)
