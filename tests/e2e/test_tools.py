"""Tool calling through the stack, parsed by the official SDK: calls in the message and in
stream deltas, finish_reason "tool_calls", a full round trip with the tool's result, tool_choice
none / required / a named function, and the 400s of malformed tool requests.

`scripta` (a scripted worker) calls a tool whenever it may: the named or the first tool, its
required string arguments filled with the last user message; given a tool result it answers
"The tool said: <result>". `liv` is the real Gemma 270M under a tool-call grammar."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from tests.e2e.helpers import function_calls

TOOL_CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What's the weather in Berlin?"}
]


def test_a_tool_call_in_the_message(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="scripta", messages=ASK, tools=[WEATHER], max_tokens=64
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = function_calls(choice.message)
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function" and TOOL_CALL_ID.match(call.id)
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "What's the weather in Berlin?"}
    usage = completion.usage
    assert usage is not None and usage.completion_tokens > 0


@dataclass
class StreamedToolCalls:
    pieces: list[ChoiceDeltaToolCall]
    finish_reasons: list[str]

    def arguments(self, index: int = 0) -> Any:
        """The arguments of call `index`, its pieces joined and parsed as JSON."""
        text = "".join(
            piece.function.arguments or ""
            for piece in self.pieces
            if piece.index == index and piece.function is not None
        )
        return json.loads(text)


def collect(stream: Iterable[ChatCompletionChunk]) -> StreamedToolCalls:
    collected = StreamedToolCalls([], [])
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        collected.pieces.extend(choice.delta.tool_calls or [])
        if choice.finish_reason is not None:
            collected.finish_reasons.append(choice.finish_reason)
    return collected


def test_a_tool_call_streamed_in_deltas(client: openai.OpenAI) -> None:
    streamed = collect(
        client.chat.completions.create(
            model="scripta", messages=ASK, tools=[WEATHER], max_tokens=64, stream=True
        )
    )
    assert streamed.finish_reasons == ["tool_calls"]
    assert len(streamed.pieces) > 1, "the arguments arrive in pieces"
    first, rest = streamed.pieces[0], streamed.pieces[1:]
    # OpenAI's stream semantics: the first piece of a call names it, the rest append arguments.
    assert first.index == 0 and first.id and TOOL_CALL_ID.match(first.id)
    assert first.type == "function" and first.function and first.function.name == "get_weather"
    assert all(piece.index == 0 and piece.id is None for piece in rest)
    assert streamed.arguments() == {"location": "What's the weather in Berlin?"}


def test_a_full_round_trip_with_the_tool_result(client: openai.OpenAI) -> None:
    asked = client.chat.completions.create(
        model="scripta", messages=ASK, tools=[WEATHER], max_tokens=64
    )
    call = function_calls(asked.choices[0].message)[0]
    history: list[ChatCompletionMessageParam] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 °C"},
    ]
    answered = client.chat.completions.create(
        model="scripta", messages=history, tools=[WEATHER], max_tokens=64
    )
    choice = answered.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert "Sunny, 21 °C" in (choice.message.content or "")


def test_tool_choice_none_answers_with_text(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="scripta", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=64
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert choice.message.content


def test_a_named_tool_choice_calls_that_tool(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="scripta",
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=64,
    )
    calls = function_calls(completion.choices[0].message)
    assert [call.function.name for call in calls] == ["get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "What's the weather in Berlin?"}


def test_the_real_model_calls_the_required_tool_with_valid_arguments(
    client: openai.OpenAI,
) -> None:
    completion = client.chat.completions.create(
        model="liv",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=64,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    calls = function_calls(choice.message)
    assert calls and all(TOOL_CALL_ID.match(call.id) for call in calls)
    assert calls[0].function.name == "get_weather"
    arguments = json.loads(calls[0].function.arguments)
    assert isinstance(arguments, dict) and isinstance(arguments["location"], str)


def test_the_real_model_calls_the_named_tool_in_a_stream(client: openai.OpenAI) -> None:
    streamed = collect(
        client.chat.completions.create(
            model="liv",
            messages=[{"role": "user", "content": "What time is it in Paris?"}],
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            max_tokens=64,
            temperature=0,
            stream=True,
        )
    )
    assert streamed.finish_reasons == ["tool_calls"]
    names = [piece.function.name for piece in streamed.pieces if piece.function]
    assert [name for name in names if name] == ["get_time"]
    assert isinstance(streamed.arguments()["city"], str)


def test_the_real_model_answers_a_tool_result_with_text(client: openai.OpenAI) -> None:
    history: list[ChatCompletionMessageParam] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_000000000000000000000001",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Berlin"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_000000000000000000000001", "content": "Sunny"},
    ]
    completion = client.chat.completions.create(
        model="liv",
        messages=history,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=24,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason in {"stop", "length"}
    assert not choice.message.tool_calls
    assert (choice.message.content or "").strip()


def bad_request(client: openai.OpenAI, **request: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"max_tokens": 8, "messages": ASK, **request})
    body = caught.value.body
    assert isinstance(body, dict)
    return body


def test_tools_on_a_route_without_the_capability_are_refused(client: openai.OpenAI) -> None:
    body = bad_request(client, model="liv-think", tools=[WEATHER])
    assert body["code"] == "unsupported_parameter" and body["param"] == "tools"
    assert "tools" in body["message"]


def test_malformed_tool_requests_are_400s_naming_the_parameter(client: openai.OpenAI) -> None:
    assert bad_request(client, model="scripta", tool_choice="required")["param"] == "tool_choice"
    undeclared = {"type": "function", "function": {"name": "get_time"}}
    assert (
        bad_request(client, model="scripta", tools=[WEATHER], tool_choice=undeclared)["param"]
        == "tool_choice"
    )
    not_a_function = {"type": "retrieval", "function": WEATHER["function"]}
    assert bad_request(client, model="scripta", tools=[not_a_function])["param"].startswith("tools")
    orphan_result: list[ChatCompletionMessageParam] = [
        *ASK,
        {"role": "tool", "tool_call_id": "call_nobodymadethiscall0000", "content": "42"},
    ]
    assert bad_request(client, model="scripta", tools=[WEATHER], messages=orphan_result)[
        "param"
    ].startswith("messages")
