"""Events produced in a worker thread reach asyncio in order; failures surface."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from regio_worker.engine.base import FinishReason, GenerationFinished, TextDelta
from regio_worker.engine.thread_bridge import EmitEvent, stream_from_thread


async def test_events_arrive_in_order_from_another_thread() -> None:
    threads: set[str] = set()

    def work(emit: EmitEvent) -> None:
        threads.add(threading.current_thread().name)
        for index in range(100):
            emit(TextDelta(str(index)))
        emit(GenerationFinished(FinishReason.STOP))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-test") as executor:
        events = [event async for event in stream_from_thread(executor, work)]
    assert events[:-1] == [TextDelta(str(index)) for index in range(100)]
    assert events[-1] == GenerationFinished(FinishReason.STOP)
    assert all(name.startswith("bridge-test") for name in threads)


async def test_exception_in_the_thread_is_raised_after_its_events() -> None:
    def work(emit: EmitEvent) -> None:
        emit(TextDelta("partial"))
        raise RuntimeError("boom")

    received: list[object] = []
    with ThreadPoolExecutor(max_workers=1) as executor, pytest.raises(RuntimeError, match="boom"):
        async for event in stream_from_thread(executor, work):
            received.append(event)
    assert received == [TextDelta("partial")]
