"""Parsing the usage messages that workers publish to JetStream: one record, or a batch."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import DecodeError

from regio.inference.v1 import inference_pb2
from regio_common.usage_stream import usage_records


class MalformedUsageRecord(ValueError):
    """A payload that can never be settled; retrying it would only loop."""


def parse_usage_message(
    payload: bytes, headers: Mapping[str, str] | None = None
) -> list[inference_pb2.UsageRecord]:
    """The records of one message. A batch is malformed as a whole if any of its records is:
    workers never publish such a record, so the message is not theirs to settle."""
    try:
        records = usage_records(payload, headers)
    except DecodeError as error:
        raise MalformedUsageRecord(f"not a usage message: {error}") from None
    if not records:
        raise MalformedUsageRecord("usage batch without records")
    if not all(record.transaction_id for record in records):
        raise MalformedUsageRecord("usage record without transaction_id")
    return records
