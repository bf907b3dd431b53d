"""Releases expired holds periodically, so that credit held by a lost request comes back; and
refreshes the open-holds gauge and deletes stale usage windows on the same beat."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import psycopg
import structlog

from regio_billing.database import BillingPool
from regio_billing.metrics import BillingMetrics

log = structlog.get_logger()


def open_holds_counter(pool: BillingPool) -> Callable[[], Awaitable[int]]:
    """A cheap count of the open holds (served by the partial index on open holds)."""

    async def count() -> int:
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT count(*) FROM billing.holds WHERE status = 'open'")
            row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    return count


class HoldSweeper:
    def __init__(
        self,
        sweep: Callable[[], Awaitable[int]],
        interval_seconds: float,
        *,
        count_open: Callable[[], Awaitable[int]] | None = None,
        prune: Callable[[], Awaitable[int]] | None = None,
        metrics: BillingMetrics | None = None,
    ) -> None:
        """`prune` (optional) deletes stale usage windows on the same beat."""
        self._sweep = sweep
        self._prune = prune
        self._interval = interval_seconds
        self._count_open = count_open
        self._metrics = metrics or BillingMetrics()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hold-sweeper")

    async def stop(self) -> None:
        """Let a sweep in progress finish its transaction, then stop."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                released = await self._sweep()
                if released:
                    self._metrics.holds_expired.inc(released)
                    log.info("expired_holds_released", count=released)
                if self._count_open is not None:
                    self._metrics.holds_open.set(await self._count_open())
                if self._prune is not None:
                    pruned = await self._prune()
                    if pruned:
                        log.info("usage_windows_pruned", count=pruned)
            except Exception as error:  # the database may be briefly unreachable; try next round
                if isinstance(error, psycopg.Error):
                    self._metrics.database_errors.inc()
                log.exception("hold_sweep_failed")
            with contextlib.suppress(TimeoutError):  # the interval passed without a stop
                await asyncio.wait_for(self._stop.wait(), timeout=self._interval)
