"""One way to connect to NATS, with the reconnect behaviour every service wants."""

from __future__ import annotations

import structlog
from nats.aio.client import Client


async def connect_nats(url: str, name: str) -> Client:
    log = structlog.get_logger()

    async def on_error(error: Exception) -> None:
        log.warning("nats_error", error=str(error))

    async def on_disconnected() -> None:
        # A deliberate close (drain at shutdown) also disconnects: only a lost link is a warning.
        if not client.is_closed and not client.is_draining:
            log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    client = Client()
    await client.connect(
        servers=[server.strip() for server in url.split(",")],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    return client
