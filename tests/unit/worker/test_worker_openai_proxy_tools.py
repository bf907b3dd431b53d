"""The OpenAI proxy engine's mapping of tools, reasoning and media: what the upstream is sent,
and how its streamed tool calls, reasoning and usage come back as our events."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import pytest

from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
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
    Usage,
)
from regio_worker.engine.openai_proxy import (
    SseEvent,
    StreamChunk,
    StreamTranslator,
    UpstreamToolCall,
    UpstreamUsage,
    chat_completion_body,
    parse_event,
    settle_usage,
)

WEATHER = ToolDefinition(
    "get_weather",
    "Weather at a place",
    json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}),
)
CLOCK = ToolDefinition("get_time", strict=True)


def body_of(**fields: Any) -> dict[str, Any]:
    messages = fields.pop("messages", (ChatMessage("user", "Hi"),))
    return chat_completion_body(GenerationRequest("t", messages, **fields), None)


def event(payload: dict[str, Any]) -> StreamChunk:
    return parse_event(SseEvent("message", json.dumps(payload)))


def delta(**fields: Any) -> StreamChunk:
    return event({"choices": [{"index": 0, "delta": fields}]})


def counting_ids() -> StreamTranslator:
    numbers = itertools.count(1)
    return StreamTranslator(new_id=lambda: f"call_made{next(numbers)}")


# -- what the upstream is sent -------------------------------------------------------------------


def test_tools_are_sent_in_openais_shape_with_parallel_calls_spelled_out() -> None:
    body = body_of(tools=(WEATHER, CLOCK))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather at a place",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "parameters": {"type": "object", "properties": {}},
                "strict": True,
            },
        },
    ]
    # llama-server's default is false, OpenAI's true: always said.
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", True)


@pytest.mark.parametrize(
    ("fields", "choice"),
    [
        ({"tool_choice": ToolChoiceMode.REQUIRED}, "required"),
        ({"tool_choice": ToolChoiceMode.NONE}, "none"),
        ({"tool_choice": ToolChoiceMode.AUTO}, "auto"),
    ],
)
def test_tool_choices(fields: dict[str, Any], choice: str) -> None:
    body = body_of(tools=(WEATHER, CLOCK), **fields)
    assert body["tool_choice"] == choice
    assert [tool["function"]["name"] for tool in body["tools"]] == ["get_weather", "get_time"]


def test_a_named_function_is_required_with_only_that_tool() -> None:
    # llama-server reads no named tool_choice; "required" over one tool means the same.
    body = body_of(
        tools=(WEATHER, CLOCK),
        tool_choice=ToolChoiceMode.FUNCTION,
        tool_choice_function="get_time",
    )
    assert body["tool_choice"] == "required"
    assert [tool["function"]["name"] for tool in body["tools"]] == ["get_time"]


def test_single_call_and_no_tool_fields_without_tools() -> None:
    assert body_of(tools=(WEATHER,), parallel_tool_calls=False)["parallel_tool_calls"] is False
    # tool_choice "none": the upstream calls nothing, so parallelism is not its business.
    assert "parallel_tool_calls" not in body_of(tools=(WEATHER,), tool_choice=ToolChoiceMode.NONE)
    bare = body_of(tool_choice=ToolChoiceMode.REQUIRED)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & bare.keys()


def test_a_tool_round_trip_keeps_calls_and_results() -> None:
    messages = (
        ChatMessage("user", "Weather in Rome?"),
        ChatMessage(
            "assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city":"Rome"}'),)
        ),
        ChatMessage("tool", "Sunny", tool_call_id="call_1", name="get_weather"),
    )
    assert body_of(messages=messages, tools=(WEATHER,))["messages"] == [
        {"role": "user", "content": "Weather in Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                }
            ],
        },
        {"role": "tool", "content": "Sunny", "tool_call_id": "call_1", "name": "get_weather"},
    ]


def test_media_become_content_parts_at_their_offsets() -> None:
    png, wav, mp3 = b"\x89PNG-bytes", b"RIFF-bytes", b"ID3-bytes"
    message = ChatMessage(
        "user",
        "Look: and listen",
        media=(
            MediaPart(MediaKind.AUDIO, mp3, "audio/mpeg", 16),
            MediaPart(MediaKind.IMAGE, png, "image/png", 5),
            MediaPart(MediaKind.AUDIO, wav, "audio/wav", 5),
        ),
    )
    encoded = {data: base64.b64encode(data).decode() for data in (png, wav, mp3)}
    assert body_of(messages=(message,))["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:image/png;base64,{encoded[png]}"},
                },
                {"type": "input_audio", "input_audio": {"data": encoded[wav], "format": "wav"}},
                {"type": "text", "text": " and listen"},
                {"type": "input_audio", "input_audio": {"data": encoded[mp3], "format": "mp3"}},
            ],
        }
    ]


def test_media_only_message_has_no_empty_text_parts() -> None:
    message = ChatMessage("user", "", media=(MediaPart(MediaKind.IMAGE, b"x", "image/jpeg", 0),))
    [sent] = body_of(messages=(message,))["messages"]
    assert sent["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,eA=="}}
    ]


@pytest.mark.parametrize(
    ("effort", "expected"),
    [
        (ReasoningEffort.OFF, {"chat_template_kwargs": {"enable_thinking": False}}),
        (
            ReasoningEffort.MEDIUM,
            {
                "reasoning_effort": "medium",
                "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "medium"},
            },
        ),
        (
            ReasoningEffort.HIGH,
            {
                "reasoning_effort": "high",
                "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"},
            },
        ),
        (
            ReasoningEffort.MAX,
            {
                "reasoning_effort": "high",
                "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"},
            },
        ),
    ],
)
def test_reasoning_effort(effort: ReasoningEffort, expected: dict[str, Any]) -> None:
    body = body_of(reasoning_effort=effort, reasoning_budget=100)
    sent = {key: body[key] for key in ("reasoning_effort", "chat_template_kwargs") if key in body}
    assert sent == expected
    assert "100" not in json.dumps(body)  # no upstream takes a budget per request


# -- what comes back -----------------------------------------------------------------------------


def test_reasoning_from_either_field_but_never_twice() -> None:
    assert delta(reasoning_content="Hmm").reasoning == "Hmm"
    assert delta(reasoning="Hmm").reasoning == "Hmm"
    both = delta(reasoning_content="Hmm", reasoning="Hmm", content=None)
    assert StreamTranslator().events(both) == [ReasoningDelta("Hmm")]


def test_tool_call_pieces_are_parsed() -> None:
    chunk = delta(
        tool_calls=[
            {
                "index": 0,
                "id": "abc",
                "type": "function",
                "function": {"name": "f", "arguments": ""},
            },
            {"index": 0, "function": {"arguments": {"a": 1}}},
            {"index": True, "id": 7, "function": "nonsense"},
            "garbage",
        ]
    )
    assert chunk.tool_calls == (
        UpstreamToolCall(0, "abc", "f", ""),
        UpstreamToolCall(0, arguments='{"a": 1}'),
        UpstreamToolCall(),
    )


def test_usage_reads_reasoning_tokens() -> None:
    usage = event(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 40,
                "completion_tokens_details": {"reasoning_tokens": 31},
            },
        }
    ).usage
    assert usage == UpstreamUsage(9, 40, reasoning_tokens=31)


def test_streamed_calls_keep_upstream_ids_and_get_ours_when_missing() -> None:
    translator = counting_ids()
    pieces = [
        delta(tool_calls=[{"index": 0, "id": "up1", "function": {"name": "f", "arguments": ""}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]),
        delta(tool_calls=[{"index": 0, "id": "up1", "function": {"arguments": "1}"}}]),
        delta(tool_calls=[{"index": 1, "function": {"name": "g", "arguments": "{}"}}]),
    ]
    events = [e for chunk in pieces for e in translator.events(chunk)]
    assert events == [
        ToolCallDelta(0, "up1", "f", ""),
        ToolCallDelta(0, arguments='{"a":'),
        ToolCallDelta(0, arguments="1}"),
        ToolCallDelta(1, "call_made1", "g", "{}"),
    ]
    assert translator.finish_reason("tool_calls") is FinishReason.TOOL_CALLS
    # Some servers say "stop" after calls; an answer with calls still ends TOOL_CALLS.
    assert translator.finish_reason("stop") is FinishReason.TOOL_CALLS
    assert translator.finish_reason("length") is FinishReason.LENGTH


def test_calls_without_index_are_told_apart_by_id_and_numbered_in_order() -> None:
    translator = counting_ids()
    chunk = delta(
        tool_calls=[
            {"id": "a", "function": {"name": "f", "arguments": '{"x":1}'}},
            {"id": "b", "function": {"name": "g"}},
            {"function": {"arguments": "{}"}},  # continues the last call
        ]
    )
    assert translator.events(chunk) == [
        ToolCallDelta(0, "a", "f", '{"x":1}'),
        ToolCallDelta(1, "b", "g", ""),
        ToolCallDelta(1, arguments="{}"),
    ]


def test_upstream_indexes_are_renumbered_from_zero() -> None:
    translator = counting_ids()
    chunk = delta(tool_calls=[{"index": 3, "id": "x", "function": {"name": "f"}}])
    assert translator.events(chunk) == [ToolCallDelta(0, "x", "f", "")]


def test_arguments_before_the_name_are_held_until_it_comes() -> None:
    translator = counting_ids()
    early = delta(tool_calls=[{"index": 0, "id": "x", "function": {"arguments": '{"a"'}}])
    assert translator.events(early) == []
    late = delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": ":1}"}}])
    assert translator.events(late) == [ToolCallDelta(0, "x", "f", '{"a":1}')]


def test_text_reasoning_and_calls_of_one_chunk_in_order_and_counted() -> None:
    translator = counting_ids()
    chunk = delta(
        reasoning_content="so",
        content="ok",
        tool_calls=[{"index": 0, "function": {"name": "f"}}],
    )
    assert translator.events(chunk) == [
        ReasoningDelta("so"),
        TextDelta("ok"),
        ToolCallDelta(0, "call_made1", "f", ""),
    ]
    assert (translator.pieces, translator.reasoning_pieces) == (3, 1)
    assert translator.finish_reason("stop") is FinishReason.TOOL_CALLS


def test_an_answer_without_calls_keeps_the_upstreams_finish() -> None:
    translator = StreamTranslator()
    translator.events(delta(content="hi"))
    assert translator.finish_reason("stop") is FinishReason.STOP


def test_reasoning_tokens_at_least_one_per_reasoning_delta_and_within_completion() -> None:
    # llama-server does not count reasoning tokens: the deltas stand in.
    silent = settle_usage(UpstreamUsage(10, 30), 0, False, deltas=20, reasoning_deltas=12)
    assert silent.reasoning_tokens == 12
    counted = settle_usage(UpstreamUsage(10, 30, reasoning_tokens=25), 0, False, 20, 12)
    assert counted.reasoning_tokens == 25
    odd = settle_usage(UpstreamUsage(10, 5, reasoning_tokens=25), 0, False, 20, 12)
    assert odd.reasoning_tokens == 5
    assert settle_usage(None, 0, False, deltas=6, reasoning_deltas=4) == Usage(
        completion_tokens=6, reasoning_tokens=4
    )
