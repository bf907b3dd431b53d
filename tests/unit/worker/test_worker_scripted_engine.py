"""The scripted engine: fixed pieces, honest counts, max_tokens, abort and failure; reasoning
with its budget rescue, tool calls and tool results, and the description of received media."""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import wave

import pytest

from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    MediaKind,
    MediaPart,
    ReasoningDelta,
    ReasoningEffort,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    ToolDefinition,
)
from regio_worker.engine.scripted import (
    DEFAULT_PIECES,
    REASONING_PIECES,
    ScriptedEngine,
    ScriptedEngineFailure,
    tool_arguments,
)

CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")
ASK = "Weather in Rome please"
WEATHER = ToolDefinition(
    "get_weather",
    parameters_json=json.dumps(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        }
    ),
)
CLOCK = ToolDefinition("get_time")


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


def finished(events: list[GenerationEvent]) -> GenerationFinished:
    final = events[-1]
    assert isinstance(final, GenerationFinished)
    assert not any(isinstance(event, GenerationFinished) for event in events[:-1])
    return final


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def tool_request(**fields: object) -> GenerationRequest:
    return GenerationRequest(
        transaction_id="txn-tools",
        messages=(ChatMessage("user", ASK),),
        **fields,  # type: ignore[arg-type]
    )


def calls_of(events: list[GenerationEvent]) -> dict[int, dict[str, str]]:
    """The calls as a client assembles them from the stream pieces."""
    calls: dict[int, dict[str, str]] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            if event.index not in calls:
                calls[event.index] = {"id": event.id, "name": event.name, "arguments": ""}
            else:
                assert (event.id, event.name) == ("", "")
            calls[event.index]["arguments"] += event.arguments
    return calls


# -- reasoning -------------------------------------------------------------------------------------


async def test_reasoning_comes_first_and_is_counted() -> None:
    events = await collect(ScriptedEngine(), request(reasoning_effort=ReasoningEffort.MEDIUM))
    reasoning = [event for event in events if isinstance(event, ReasoningDelta)]
    assert events[: len(reasoning)] == reasoning
    assert [event.text for event in reasoning] == list(REASONING_PIECES)
    assert text_of(events) == "".join(DEFAULT_PIECES)
    final = finished(events)
    assert final.finish_reason is FinishReason.STOP and final.thinking_rescued == ""
    assert final.usage.reasoning_tokens == len(REASONING_PIECES)
    assert final.usage.completion_tokens == len(REASONING_PIECES) + len(DEFAULT_PIECES)


async def test_no_reasoning_when_off() -> None:
    events = await collect(ScriptedEngine(), request())
    assert not any(isinstance(event, ReasoningDelta) for event in events)
    assert finished(events).usage.reasoning_tokens == 0


async def test_a_small_budget_cuts_the_reasoning_and_says_rescued() -> None:
    events = await collect(
        ScriptedEngine(), request(reasoning_effort=ReasoningEffort.HIGH, reasoning_budget=2)
    )
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == list(REASONING_PIECES[:2])
    assert text_of(events) == "".join(DEFAULT_PIECES)  # the answer still comes
    final = finished(events)
    assert (final.finish_reason, final.thinking_rescued) == (FinishReason.STOP, "budget")
    assert final.usage.reasoning_tokens == 2
    assert final.usage.completion_tokens == 2 + len(DEFAULT_PIECES)


async def test_the_default_budget_is_the_llama_engines_share_of_max_tokens() -> None:
    # MEDIUM reasons on at most half of max_tokens: 3 of 6.
    events = await collect(
        ScriptedEngine(["a", "b", "c"]),
        request(reasoning_effort=ReasoningEffort.MEDIUM, max_tokens=6),
    )
    final = finished(events)
    assert final.thinking_rescued == "budget"
    assert final.usage.reasoning_tokens == 3
    assert final.usage.completion_tokens == 6 and final.finish_reason is FinishReason.STOP
    roomy = await collect(
        ScriptedEngine(), request(reasoning_effort=ReasoningEffort.MEDIUM, max_tokens=64)
    )
    assert finished(roomy).thinking_rescued == ""


# -- tools -----------------------------------------------------------------------------------------


async def test_auto_calls_the_first_tool_in_pieces_filling_required_arguments() -> None:
    events = await collect(ScriptedEngine(), tool_request(tools=(WEATHER, CLOCK)))
    pieces = [event for event in events if isinstance(event, ToolCallDelta)]
    assert len(pieces) == 3 and pieces[0].arguments == ""
    [call] = calls_of(events).values()
    assert CALL_ID.match(call["id"]) and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": ASK}
    assert text_of(events) == ""
    final = finished(events)
    assert final.finish_reason is FinishReason.TOOL_CALLS
    assert final.usage.completion_tokens == 3


async def test_a_named_function_is_the_one_called() -> None:
    events = await collect(
        ScriptedEngine(),
        tool_request(
            tools=(WEATHER, CLOCK),
            tool_choice=ToolChoiceMode.FUNCTION,
            tool_choice_function="get_time",
        ),
    )
    assert [call["name"] for call in calls_of(events).values()] == ["get_time"]
    assert json.loads(calls_of(events)[0]["arguments"]) == {}


async def test_required_with_parallel_calls_calls_two_tools_with_distinct_ids() -> None:
    engine = ScriptedEngine()
    both = calls_of(
        await collect(
            engine, tool_request(tools=(WEATHER, CLOCK), tool_choice=ToolChoiceMode.REQUIRED)
        )
    )
    assert [call["name"] for call in both.values()] == ["get_weather", "get_time"]
    assert both[0]["id"] != both[1]["id"]
    single = calls_of(
        await collect(
            engine,
            tool_request(
                tools=(WEATHER, CLOCK),
                tool_choice=ToolChoiceMode.REQUIRED,
                parallel_tool_calls=False,
            ),
        )
    )
    assert [call["name"] for call in single.values()] == ["get_weather"]


async def test_tool_choice_none_answers_with_text() -> None:
    events = await collect(
        ScriptedEngine(), tool_request(tools=(WEATHER,), tool_choice=ToolChoiceMode.NONE)
    )
    assert not calls_of(events) and text_of(events) == "".join(DEFAULT_PIECES)
    assert finished(events).finish_reason is FinishReason.STOP


async def test_a_tool_result_is_quoted_so_the_round_trip_completes() -> None:
    history = (
        ChatMessage("user", ASK),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", "{}"),)),
        ChatMessage("tool", "Sunny, 21 °C", tool_call_id="call_1"),
    )
    events = await collect(
        ScriptedEngine(), GenerationRequest("txn-result", history, tools=(WEATHER,))
    )
    assert text_of(events) == "The tool said: Sunny, 21 °C"
    final = finished(events)
    assert final.finish_reason is FinishReason.STOP and not calls_of(events)
    assert final.usage.completion_tokens == 6  # one piece per word


async def test_reasoning_then_a_call() -> None:
    events = await collect(
        ScriptedEngine(),
        tool_request(tools=(WEATHER,), reasoning_effort=ReasoningEffort.MEDIUM),
    )
    kinds = [type(event).__name__ for event in events[:-1]]
    assert kinds == ["ReasoningDelta"] * 4 + ["ToolCallDelta"] * 3
    assert finished(events).usage.reasoning_tokens == 4


async def test_max_tokens_cuts_a_call_with_length() -> None:
    events = await collect(ScriptedEngine(), tool_request(tools=(WEATHER,), max_tokens=2))
    final = finished(events)
    assert final.finish_reason is FinishReason.LENGTH and final.usage.completion_tokens == 2


def test_arguments_follow_the_schema_types() -> None:
    schema = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "maybe": {"type": ["null", "string"]},
            "count": {"type": "integer"},
            "ratio": {"type": "number"},
            "flag": {"type": "boolean"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "fixed": {"const": 7},
            "items": {"type": "array"},
            "optional": {"type": "string"},
        },
        "required": ["text", "maybe", "count", "ratio", "flag", "unit", "fixed", "items", "ghost"],
    }
    tool = ToolDefinition("t", parameters_json=json.dumps(schema))
    assert tool_arguments(tool, "hi") == {
        "text": "hi",
        "maybe": "hi",
        "count": 1,
        "ratio": 1,
        "flag": True,
        "unit": "celsius",
        "fixed": 7,
        "items": None,
        "ghost": None,
    }
    assert tool_arguments(ToolDefinition("t", parameters_json="[1]"), "hi") == {}


# -- media -----------------------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr


def wav_of(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * int(8000 * seconds))
    return buffer.getvalue()


async def test_the_answer_starts_with_the_media_received() -> None:
    message = ChatMessage(
        "user",
        "What is this?",
        media=(
            MediaPart(MediaKind.IMAGE, png_header(640, 480), "image/png", 0),
            MediaPart(MediaKind.AUDIO, wav_of(1.0), "audio/wav", 0),
        ),
    )
    events = await collect(ScriptedEngine(["Done."]), GenerationRequest("txn-media", (message,)))
    assert text_of(events) == "[media: image/png 640x480, audio/wav 1.0s] Done."
    assert finished(events).usage.completion_tokens == 2
