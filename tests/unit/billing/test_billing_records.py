"""Parsing usage records from JetStream payloads."""

from __future__ import annotations

import pytest

from regio.inference.v1 import inference_pb2
from regio_billing.records import MalformedUsageRecord, parse_usage_record


def test_a_record_round_trips() -> None:
    payload = inference_pb2.UsageRecord(
        transaction_id="txn-1", prompt_tokens=100, completion_tokens=50, billable=True
    ).SerializeToString()

    record = parse_usage_record(payload)

    assert (record.transaction_id, record.prompt_tokens, record.completion_tokens) == (
        "txn-1",
        100,
        50,
    )
    assert record.billable


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff not a protobuf",
        b"",  # parses, but names no transaction
        inference_pb2.UsageRecord(prompt_tokens=5).SerializeToString(),
    ],
)
def test_unsettleable_payloads_are_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedUsageRecord):
        parse_usage_record(payload)
