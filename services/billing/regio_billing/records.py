"""Parsing the usage records that workers publish to JetStream."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from regio.inference.v1 import inference_pb2


class MalformedUsageRecord(ValueError):
    """A payload that can never be settled; retrying it would only loop."""


def parse_usage_record(payload: bytes) -> inference_pb2.UsageRecord:
    record = inference_pb2.UsageRecord()
    try:
        record.ParseFromString(payload)
    except DecodeError as error:
        raise MalformedUsageRecord(f"not a UsageRecord: {error}") from None
    if not record.transaction_id:
        raise MalformedUsageRecord("usage record without transaction_id")
    return record
