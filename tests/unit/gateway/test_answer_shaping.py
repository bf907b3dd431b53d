"""What clients read of tool calls and reasoning: the real gateway answers scripted worker
chunks, and the official `openai` SDK parses the JSON answers and accumulates the streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import openai
import pytest

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Catalogue
from regio_common.config_records import ReasoningOutput, ThinkingSettings
from regio_common.settings import DEFAULT_CATALOGUE
from tests.unit.gateway.fake_gateway import (
    API_KEY,
    RunningGateway,
    bearer,
    chat_body,
    running_gateway,
    thinking_catalogue,
)

DELTA = inference_pb2.CHUNK_KIND_DELTA
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ASK: Any = [{"role": "user", "content": "Weather in Berlin and Paris?"}]


def piece(index: int, arguments: str, call_id: str = "", name: str = "") -> Any:
    return inference_pb2.ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments)


def final(
    reason: inference_pb2.FinishReason.ValueType = inference_pb2.FINISH_REASON_STOP,
    reasoning_tokens: int = 0,
    rescued: str = "",
) -> inference_pb2.InferenceChunk:
    return inference_pb2.InferenceChunk(
        kind=inference_pb2.CHUNK_KIND_FINAL,
        finish_reason=reason,
        usage=inference_pb2.Usage(
            prompt_tokens=7, completion_tokens=20, reasoning_tokens=reasoning_tokens
        ),
        thinking_rescued=rescued,
    )


# Two calls, each named by its first piece; arguments in pieces; some text before them.
TOOL_SCRIPT = [
    inference_pb2.InferenceChunk(kind=DELTA, text_delta="Checking. "),
    inference_pb2.InferenceChunk(
        kind=DELTA, tool_calls=[piece(0, '{"city": ', "call_" + "a" * 24, "get_weather")]
    ),
    inference_pb2.InferenceChunk(kind=DELTA, tool_calls=[piece(0, '"Berlin"}')]),
    inference_pb2.InferenceChunk(
        kind=DELTA,
        tool_calls=[piece(1, '{"city": "Paris"}', "call_" + "b" * 24, "get_weather")],
    ),
    final(inference_pb2.FINISH_REASON_TOOL_CALLS),
]
ONLY_CALL_SCRIPT = [
    inference_pb2.InferenceChunk(
        kind=DELTA, tool_calls=[piece(0, '{"city": "Rome"}', "call_" + "c" * 24, "get_weather")]
    ),
    final(inference_pb2.FINISH_REASON_TOOL_CALLS),
]
REASONING_SCRIPT = [
    inference_pb2.InferenceChunk(kind=DELTA, reasoning_delta="Berlin is "),
    inference_pb2.InferenceChunk(kind=DELTA, reasoning_delta="in Germany."),
    inference_pb2.InferenceChunk(kind=DELTA, text_delta="It is "),
    inference_pb2.InferenceChunk(kind=DELTA, text_delta="sunny."),
    final(reasoning_tokens=5),
]


@asynccontextmanager
async def client_of(
    script: list[inference_pb2.InferenceChunk],
    output: ReasoningOutput = "reasoning_content",
    catalogue: Catalogue | None = None,
) -> AsyncIterator[tuple[RunningGateway, openai.AsyncOpenAI]]:
    async with running_gateway(
        catalogue=catalogue or thinking_catalogue(),
        thinking=ThinkingSettings(reasoning_output=output),
    ) as gateway:
        gateway.dispatcher.script = script
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
        try:
            yield gateway, client
        finally:
            await client.close()


async def test_tool_calls_in_a_json_answer() -> None:
    async with client_of(TOOL_SCRIPT) as (_, client):
        completion = await client.chat.completions.create(
            model="liv", messages=ASK, tools=[WEATHER]
        )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking. "
    calls = choice.message.tool_calls or []
    assert [(call.id, call.type) for call in calls] == [
        ("call_" + "a" * 24, "function"),
        ("call_" + "b" * 24, "function"),
    ]
    assert [call.function.name for call in calls] == ["get_weather", "get_weather"]  # type: ignore[union-attr]
    assert [json.loads(call.function.arguments) for call in calls] == [  # type: ignore[union-attr]
        {"city": "Berlin"},
        {"city": "Paris"},
    ]


async def test_an_answer_of_only_tool_calls_has_null_content() -> None:
    async with client_of(ONLY_CALL_SCRIPT) as (gateway, client):
        completion = await client.chat.completions.create(
            model="liv", messages=ASK, tools=[WEATHER], tool_choice="required"
        )
        async with (
            aiohttp.ClientSession(gateway.url) as http,
            http.post(
                "/v1/chat/completions", json=chat_body(tools=[WEATHER]), headers=bearer()
            ) as raw,
        ):
            message = (await raw.json())["choices"][0]["message"]
    assert completion.choices[0].message.content is None
    assert message["content"] is None and message["role"] == "assistant"
    assert message["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Rome"}',
    }


async def test_tool_calls_streamed_as_the_sdk_accumulates_them() -> None:
    async with client_of(TOOL_SCRIPT) as (_, client):
        # The SDK's accumulating helper takes only strict tools (it parses their arguments).
        strict: Any = {**WEATHER, "function": {**WEATHER["function"], "strict": True}}
        async with client.chat.completions.stream(
            model="liv", messages=ASK, tools=[strict]
        ) as stream:
            pieces = []
            async for event in stream:
                if event.type == "chunk" and event.chunk.choices:
                    pieces.extend(event.chunk.choices[0].delta.tool_calls or [])
            completion = await stream.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking. "
    calls = choice.message.tool_calls or []
    assert [call.id for call in calls] == ["call_" + "a" * 24, "call_" + "b" * 24]
    assert [json.loads(call.function.arguments) for call in calls] == [
        {"city": "Berlin"},
        {"city": "Paris"},
    ]
    # OpenAI's piece shapes: the first piece of a call names it, later ones only append.
    first, second, other = (piece.model_dump(exclude_none=True) for piece in pieces)
    assert first == {
        "index": 0,
        "id": "call_" + "a" * 24,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": '},
    }
    assert second == {"index": 0, "function": {"arguments": '"Berlin"}'}}
    assert other["index"] == 1 and other["id"] == "call_" + "b" * 24


@pytest.mark.parametrize(
    ("output", "content", "reasoning_content"),
    [
        ("reasoning_content", "It is sunny.", "Berlin is in Germany."),
        ("think_tags", "<think>Berlin is in Germany.</think>It is sunny.", None),
        ("hidden", "It is sunny.", None),
    ],
)
async def test_reasoning_in_a_json_answer(
    output: ReasoningOutput, content: str, reasoning_content: str | None
) -> None:
    async with client_of(REASONING_SCRIPT, output) as (_, client):
        completion = await client.chat.completions.create(model="liv", messages=ASK)
    message = completion.choices[0].message
    assert message.content == content
    assert getattr(message, "reasoning_content", None) == reasoning_content
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 5


@pytest.mark.parametrize(
    ("output", "content", "reasoning_content"),
    [
        ("reasoning_content", "It is sunny.", "Berlin is in Germany."),
        ("think_tags", "<think>Berlin is in Germany.</think>It is sunny.", ""),
        ("hidden", "It is sunny.", ""),
    ],
)
async def test_reasoning_in_a_stream(
    output: ReasoningOutput, content: str, reasoning_content: str
) -> None:
    async with client_of(REASONING_SCRIPT, output) as (_, client):
        stream = await client.chat.completions.create(
            model="liv",
            messages=ASK,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert "".join(delta.content or "" for delta in deltas) == content
    streamed = "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas)
    assert streamed == reasoning_content
    if output == "think_tags":  # the tag opens with the first reasoning, closes before the answer
        assert [delta.content for delta in deltas[1:4]] == [
            "<think>Berlin is ",
            "in Germany.",
            "</think>It is ",
        ]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 5


async def test_exclude_hides_the_reasoning_but_counts_it() -> None:
    async with client_of(REASONING_SCRIPT, "think_tags") as (_, client):
        completion = await client.chat.completions.create(
            model="liv", messages=ASK, extra_body={"reasoning": {"exclude": True}}
        )
    assert completion.choices[0].message.content == "It is sunny."
    assert completion.usage is not None and completion.usage.completion_tokens_details
    assert completion.usage.completion_tokens_details.reasoning_tokens == 5


async def test_a_stream_whose_reasoning_is_all_it_had_closes_its_think_tag() -> None:
    script = [
        inference_pb2.InferenceChunk(kind=DELTA, reasoning_delta="Hmm"),
        final(inference_pb2.FINISH_REASON_LENGTH, reasoning_tokens=1),
    ]
    async with client_of(script, "think_tags") as (_, client):
        stream = await client.chat.completions.create(model="liv", messages=ASK, stream=True)
        chunks = [chunk async for chunk in stream]
    contents = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices]
    assert "".join(c or "" for c in contents) == "<think>Hmm</think>"
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_a_rescued_answer_says_so_in_json_and_in_the_stream() -> None:
    script = [*REASONING_SCRIPT[:-1], final(reasoning_tokens=5, rescued="budget")]
    async with client_of(script) as (_, client):
        raw = await client.chat.completions.with_raw_response.create(model="liv", messages=ASK)
        completion = raw.parse()
        stream = await client.chat.completions.create(model="liv", messages=ASK, stream=True)
        chunks = [chunk async for chunk in stream]
    assert raw.headers["x-regio-thinking-rescued"] == "budget"
    assert getattr(completion, "thinking_rescued", None) == "budget"
    assert completion.choices[0].message.content == "It is sunny."
    finish = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert len(finish) == 1 and getattr(finish[0], "thinking_rescued", None) == "budget"
    others = [chunk for chunk in chunks if chunk is not finish[0]]
    assert all(getattr(chunk, "thinking_rescued", None) is None for chunk in others)


async def test_an_answer_that_was_not_rescued_says_nothing() -> None:
    async with client_of(REASONING_SCRIPT) as (gateway, client):
        raw = await client.chat.completions.with_raw_response.create(model="liv", messages=ASK)
        async with (
            aiohttp.ClientSession(gateway.url) as http,
            http.post("/v1/chat/completions", json=chat_body(), headers=bearer()) as answer,
        ):
            document = await answer.json()
    assert "x-regio-thinking-rescued" not in raw.headers
    assert "thinking_rescued" not in document
    assert document["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}


async def test_the_suffix_reaches_the_worker_and_the_answer_names_the_route() -> None:
    async with client_of(REASONING_SCRIPT) as (gateway, client):
        high = await client.chat.completions.create(model="liv:high", messages=ASK)
        alias = await client.chat.completions.create(
            model="google/gemma-3-270m:max", messages=ASK, max_tokens=5000
        )
        default = await client.chat.completions.create(model="liv", messages=ASK, max_tokens=1000)
    assert high.model == alias.model == default.model == "liv"
    sent = [request.reasoning for request in gateway.dispatcher.requests]
    assert sent == [
        inference_pb2.Reasoning(effort=inference_pb2.Reasoning.EFFORT_HIGH, budget_tokens=192),
        inference_pb2.Reasoning(effort=inference_pb2.Reasoning.EFFORT_MAX, budget_tokens=4500),
        inference_pb2.Reasoning(effort=inference_pb2.Reasoning.EFFORT_MEDIUM, budget_tokens=500),
    ]


async def test_a_route_without_thinking_refuses_a_suffix_and_nothing_is_held() -> None:
    async with client_of(REASONING_SCRIPT, catalogue=Catalogue.load(DEFAULT_CATALOGUE)) as (
        gateway,
        client,
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="liv:high", messages=ASK)
        served = await client.chat.completions.create(model="liv", messages=ASK)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "unsupported_parameter" and body["param"] == "model"
    assert "thinking" in body["message"]
    assert len(gateway.billing.reserves) == 1  # only the request served
    assert gateway.dispatcher.requests[0].reasoning.effort == inference_pb2.Reasoning.EFFORT_OFF
    assert served.model == "liv"


async def test_a_fallback_with_a_suffix_serves_when_the_first_model_cannot() -> None:
    async with client_of(REASONING_SCRIPT) as (gateway, client):
        completion = await client.chat.completions.create(
            model="liv:high",
            messages=ASK,
            max_tokens=100,  # too small for high: this candidate is refused
            extra_body={"models": ["liv:medium"]},
        )
    assert completion.model == "liv"
    (request,) = gateway.dispatcher.requests
    assert request.reasoning.effort == inference_pb2.Reasoning.EFFORT_MEDIUM


async def test_a_json_answer_includes_the_text_of_its_final_chunk() -> None:
    # A worker sends a JSON answer's last gathered text with the FINAL chunk.
    last_text = final()
    last_text.text_delta = "sunny."
    script = [inference_pb2.InferenceChunk(kind=DELTA, text_delta="It is "), last_text]
    async with client_of(script) as (_, client):
        completion = await client.chat.completions.create(model="liv", messages=ASK)
    assert completion.choices[0].message.content == "It is sunny."
    assert completion.choices[0].finish_reason == "stop"


async def test_an_answer_ended_by_its_first_token_still_has_a_time_to_first_token() -> None:
    # The model's first token was the end of its turn: no text, one completion token.
    ended_at_once = final()
    ended_at_once.usage.completion_tokens = 1
    async with client_of([ended_at_once]) as (gateway, client):
        completion = await client.chat.completions.create(model="liv", messages=ASK)
        count = gateway.metrics.registry.get_sample_value(
            "regio_gateway_time_to_first_token_seconds_count", {"model": "liv", "region": "eu"}
        )
    assert completion.choices[0].message.content == ""
    assert count == 1


async def _raw_stream(arrived_together: bool) -> tuple[list[bytes], bytes]:
    """A streamed answer of REASONING_SCRIPT as the client's socket sees it: the body of each
    HTTP chunk (one per write of the gateway), and the whole body."""
    async with client_of(REASONING_SCRIPT) as (gateway, _):
        gateway.dispatcher.arrived_together = arrived_together
        body = chat_body(model="liv", stream=True, stream_options={"include_usage": True})
        writes: list[bytes] = []
        pending = b""
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{gateway.url}/v1/chat/completions", json=body, headers=bearer(API_KEY)
            ) as response,
        ):
            assert response.status == 200
            async for data, end_of_http_chunk in response.content.iter_chunks():
                pending += data
                if end_of_http_chunk:
                    writes.append(pending)
                    pending = b""
    return writes, b"".join(writes) + pending


def _without_ids(body: bytes) -> list[Any]:
    events = [line.removeprefix(b"data: ") for line in body.split(b"\n\n") if line]
    parsed = [json.loads(event) for event in events[:-1]]
    for event in parsed:
        event.pop("id"), event.pop("created")
    return [*parsed, events[-1]]


async def test_chunks_that_arrived_together_reach_the_client_in_one_write() -> None:
    one_by_one, alone = await _raw_stream(arrived_together=False)
    together, merged = await _raw_stream(arrived_together=True)

    assert _without_ids(merged) == _without_ids(alone)  # the same events, in the same order
    assert _without_ids(alone)[-1] == b"[DONE]"
    # Alone: the role with the first reasoning piece, each other piece, then the finish, the
    # usage and [DONE] with the end of the body. Together: everything in one write.
    assert len(one_by_one) == 5
    assert len(together) == 1
