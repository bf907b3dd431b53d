"""Run blocking generation code in a worker thread and stream its events into asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

from regio_worker.engine.base import GenerationEvent

EmitEvent = Callable[[GenerationEvent], None]


async def stream_from_thread(
    executor: Executor, work: Callable[[EmitEvent], None]
) -> AsyncIterator[GenerationEvent]:
    """Run `work(emit)` on `executor`; yield every event it emits, in order, until it returns.

    An exception raised by `work` is re-raised here after its events."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[GenerationEvent | None] = asyncio.Queue()  # None: work returned

    def emit(event: GenerationEvent | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            loop.call_soon_threadsafe(events.put_nowait, event)

    def run() -> None:
        try:
            work(emit)
        finally:
            emit(None)

    # The copied context carries the request's bound log context (transaction_id) to the thread.
    done = loop.run_in_executor(executor, contextvars.copy_context().run, run)
    # Retrieve the outcome even when the consumer stops early, so that it is never lost.
    done.add_done_callback(lambda future: future.cancelled() or future.exception())
    while (event := await events.get()) is not None:
        yield event
    await done
