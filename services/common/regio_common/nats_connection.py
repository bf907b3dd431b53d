"""One way to connect to NATS, with the reconnect behaviour every service wants."""

from __future__ import annotations

import nats
import structlog
from nats.aio.client import Client


async def connect_nats(url: str, name: str) -> Client:
    log = structlog.get_logger()

    async def on_error(error: Exception) -> None:
        log.warning("nats_error", error=str(error))

    async def on_disconnected() -> None:
        log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    client: Client = await nats.connect(
        servers=[server.strip() for server in url.split(",")],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    return client
