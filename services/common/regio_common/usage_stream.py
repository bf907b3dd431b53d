"""The JetStream stream that carries usage records from workers to billing, and how records
are put in its messages: one record alone, or several in a UsageBatch marked by a header."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from regio.inference.v1 import inference_pb2
from regio_common.subjects import USAGE_STREAM, USAGE_WILDCARD, usage_subject

# JetStream drops a message whose id it has seen within the duplicate window.
MSG_ID_HEADER = "Nats-Msg-Id"
# Marks a message holding a UsageBatch; its value is the number of records.
USAGE_BATCH_HEADER = "Regio-Usage-Batch"

# Redeliveries and republished records with the same Nats-Msg-Id inside this window are dropped
# by the server; billing's unique settlement key covers everything outside it.
DUPLICATE_WINDOW_SECONDS = 15 * 60


def usage_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=USAGE_STREAM,
        subjects=[USAGE_WILDCARD],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=7 * 24 * 3600,
        num_replicas=replicas,
    )


async def ensure_usage_stream(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the usage stream if it does not exist (safe to call from every service)."""
    try:
        await js.stream_info(USAGE_STREAM)
    except NotFoundError:
        await js.add_stream(usage_stream_config(replicas))


def usage_message(
    records: Sequence[inference_pb2.UsageRecord],
) -> tuple[str, bytes, dict[str, str]]:
    """Subject, payload and headers of one message holding `records` (all of one route).

    A lone record goes as it always did, so that a billing of an older version settles it;
    the id of a batch is derived from its records, so a retried publish is still dropped as
    a duplicate."""
    first = records[0]
    subject = usage_subject(first.route)
    if len(records) == 1:
        return subject, first.SerializeToString(), {MSG_ID_HEADER: first.transaction_id}
    payload = inference_pb2.UsageBatch(records=records).SerializeToString()
    headers = {
        MSG_ID_HEADER: f"{first.transaction_id}+{len(records)}",
        USAGE_BATCH_HEADER: str(len(records)),
    }
    return subject, payload, headers


def usage_records(
    payload: bytes, headers: Mapping[str, str] | None
) -> list[inference_pb2.UsageRecord]:
    """The records of one message; raises protobuf's DecodeError for a payload that is not
    what its headers say."""
    if headers is not None and USAGE_BATCH_HEADER in headers:
        return list(inference_pb2.UsageBatch.FromString(payload).records)
    return [inference_pb2.UsageRecord.FromString(payload)]
