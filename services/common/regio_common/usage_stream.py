"""The JetStream stream that carries usage records from workers to billing."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from regio_common.subjects import USAGE_STREAM, USAGE_WILDCARD

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
