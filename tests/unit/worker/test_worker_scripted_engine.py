"""The scripted engine: fixed pieces, honest counts, max_tokens, abort and failure."""

from __future__ import annotations

import asyncio

import pytest

from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    TextDelta,
)
from regio_worker.engine.scripted import ScriptedEngine, ScriptedEngineFailure


def request(transaction_id: str = "txn-1", **fields: object) -> GenerationRequest:
    return GenerationRequest(
        transaction_id=transaction_id,
        messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Say hello please")),
        **fields,  # type: ignore[arg-type]
    )


async def collect(engine: ScriptedEngine, generation: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in engine.generate(generation)]


async def test_pieces_then_one_final_event_with_honest_counts() -> None:
    engine = ScriptedEngine(["a", "b", "c"])
    events = await collect(engine, request(free_system_prompt="You are kind"))
    assert events[:-1] == [TextDelta("a"), TextDelta("b"), TextDelta("c")]
    final = events[-1]
    assert isinstance(final, GenerationFinished)
    assert final.finish_reason is FinishReason.STOP
    assert final.usage.completion_tokens == 3
    assert final.usage.prompt_tokens == 5  # words of the messages
    assert final.usage.free_prompt_tokens == 3
    assert engine.requests[0].transaction_id == "txn-1"


async def test_max_tokens_ends_with_length() -> None:
    events = await collect(ScriptedEngine(["a", "b", "c"]), request(max_tokens=2))
    final = events[-1]
    assert isinstance(final, GenerationFinished)
    assert final.finish_reason is FinishReason.LENGTH
    assert final.usage.completion_tokens == 2
    assert len(events) == 3


async def test_abort_stops_within_one_piece_with_exact_count() -> None:
    engine = ScriptedEngine(["x"] * 50, delay_seconds=0.01)
    events: list[GenerationEvent] = []
    async for event in engine.generate(request("txn-abort")):
        events.append(event)
        if len(events) == 3:
            engine.abort("txn-abort")
    final = events[-1]
    assert isinstance(final, GenerationFinished)
    assert final.finish_reason is FinishReason.CANCELLED
    assert final.usage.completion_tokens == 3 == len(events) - 1


async def test_abort_of_an_unknown_transaction_changes_nothing() -> None:
    engine = ScriptedEngine(["a"])
    engine.abort("txn-other")
    events = await collect(engine, request("txn-other"))
    assert isinstance(events[-1], GenerationFinished)
    assert events[-1].finish_reason is FinishReason.STOP


async def test_configured_failure_raises_after_some_pieces() -> None:
    engine = ScriptedEngine(["a", "b", "c"], fail_after_pieces=1)
    events: list[GenerationEvent] = []
    with pytest.raises(ScriptedEngineFailure):
        async for event in engine.generate(request()):
            events.append(event)
    assert events == [TextDelta("a")]


async def test_delay_paces_the_pieces() -> None:
    engine = ScriptedEngine(["a", "b"], delay_seconds=0.05)
    started = asyncio.get_running_loop().time()
    await collect(engine, request())
    assert asyncio.get_running_loop().time() - started >= 0.09
