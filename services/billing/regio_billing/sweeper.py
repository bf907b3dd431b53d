"""Releases expired holds periodically, so that credit held by a lost request comes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger()


class HoldSweeper:
    def __init__(self, sweep: Callable[[], Awaitable[int]], interval_seconds: float) -> None:
        self._sweep = sweep
        self._interval = interval_seconds
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
                    log.info("expired_holds_released", count=released)
            except Exception:  # the database may be briefly unreachable; try next round
                log.exception("hold_sweep_failed")
            with contextlib.suppress(TimeoutError):  # the interval passed without a stop
                await asyncio.wait_for(self._stop.wait(), timeout=self._interval)
