"""The worker's heartbeat: gateways route by it and forget workers whose heartbeats stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client

from regio.inference.v1 import inference_pb2
from regio_common.subjects import heartbeat_subject
from regio_worker.protocol import WorkerIdentity

log = structlog.get_logger()


@dataclass(frozen=True)
class LoadReport:
    slots_total: int
    slots_busy: int
    queued: int
    draining: bool


class HeartbeatPublisher:
    def __init__(
        self,
        nc: Client,
        identity: WorkerIdentity,
        interval_ms: int,
        load: Callable[[], LoadReport],
        on_publish_error: Callable[[], None] | None = None,
    ) -> None:
        self._nc = nc
        self._on_publish_error = on_publish_error
        self._identity = identity
        self._interval_ms = interval_ms
        self._load = load
        self._task: asyncio.Task[None] | None = None

    def heartbeat(self) -> inference_pb2.WorkerHeartbeat:
        load = self._load()
        return inference_pb2.WorkerHeartbeat(
            worker_id=self._identity.worker_id,
            country=self._identity.country,
            route=self._identity.route,
            slots_total=load.slots_total,
            slots_busy=load.slots_busy,
            queued=load.queued,
            sent_unix_ms=int(time.time() * 1000),
            interval_ms=self._interval_ms,
            draining=load.draining,
        )

    async def publish(self) -> None:
        subject = heartbeat_subject(self._identity.country, self._identity.route)
        try:
            await self._nc.publish(subject, self.heartbeat().SerializeToString())
        except Exception as error:  # the next beat tries again; gateways tolerate gaps
            if self._on_publish_error is not None:
                self._on_publish_error()
            log.warning("heartbeat_publish_failed", error=repr(error))

    def start(self) -> None:
        """Beat now and then every interval, until stop()."""
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await self.publish()
            await asyncio.sleep(self._interval_ms / 1000)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
