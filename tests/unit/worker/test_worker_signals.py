"""Signals: a drain once serving; during start-up a cancellation, and an exit if the
cancellation is swallowed (as nats-py does in places while connecting)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from regio_worker.app import SignalHandling


def remove_handlers() -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


async def test_signal_while_serving_requests_a_drain() -> None:
    exits: list[int] = []
    signals = SignalHandling(exit_process=exits.append, start_up_cancel_grace_seconds=0.01)
    try:
        signals.serving()
        signals.on_signal()
        assert signals.stop_requested.is_set()
        await asyncio.sleep(0.05)
        assert exits == []
    finally:
        remove_handlers()


async def test_signal_during_start_up_cancels_the_start_up() -> None:
    exits: list[int] = []

    async def starting() -> None:
        signals = SignalHandling(exit_process=exits.append, start_up_cancel_grace_seconds=0.05)
        signals.on_signal()
        await asyncio.sleep(10)  # e.g. waiting for NATS

    task = asyncio.create_task(starting())
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        remove_handlers()
    assert task.cancelled()
    await asyncio.sleep(0.1)
    assert exits == [0]  # the fallback fires too, harmlessly, in a loop that outlives the task


async def test_swallowed_cancellation_during_start_up_still_exits_with_0() -> None:
    exits: list[int] = []

    async def stubborn_start_up() -> None:
        signals = SignalHandling(exit_process=exits.append, start_up_cancel_grace_seconds=0.05)
        signals.on_signal()
        for _ in range(20):  # like a connect loop that ignores CancelledError
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    try:
        await asyncio.create_task(stubborn_start_up())
    finally:
        remove_handlers()
    assert exits == [0]
