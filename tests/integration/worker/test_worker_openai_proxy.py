"""The OpenAI proxy engine through the real worker server on the real nats-server, in front of a
tiny constant-answer OpenAI-compatible upstream (an aiohttp server on a free port): text, usage,
cancel, errors, logprobs, and tools, reasoning and media both ways."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from nats.aio.client import Client

from regio.inference.v1 import inference_pb2
from regio_common.errors import CONTEXT_LENGTH_EXCEEDED
from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
)
from regio_worker.engine.openai_proxy import (
    MESSAGE_TIMEOUT,
    SYSTEM_MESSAGE_OVERHEAD_TOKENS,
    OpenAIProxyEngine,
)
from regio_worker.probe import InferenceCall, chat_request
from regio_worker.server import ReaderCheckTiming

from .support import ReadUsageRecords, StartWorker

ACCEPTED = inference_pb2.CHUNK_KIND_ACCEPTED
DELTA = inference_pb2.CHUNK_KIND_DELTA
FINAL = inference_pb2.CHUNK_KIND_FINAL

API_KEY = "sk-upstream-secret"
PIECES = ["The", " answer", " is", " 42", "."]
UPSTREAM_PROMPT_TOKENS = 57
UPSTREAM_CACHED_TOKENS = 30


@dataclass
class FakeUpstream:
    """Answers every chat completion with `reasoning` pieces (as llama-server's
    delta.reasoning_content), then PIECES (or `pieces`), then `tool_calls` chunks (each a
    delta.tool_calls list), `delay` seconds apart, then a finish chunk, a usage chunk and [DONE];
    a request with `stream` false gets the same answer whole, as one JSON completion (unless
    `streams_always`, an upstream that ignores the flag); /tokenize counts words."""

    pieces: list[str] = field(default_factory=lambda: list(PIECES))
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[list[dict[str, Any]]] = field(default_factory=list)
    finish_reason: str = "stop"
    reasoning_tokens: int | None = None  # usage.completion_tokens_details, when set
    delay: float = 0.0
    header_delay: float = 0.0  # before the response's headers (a long prompt being read)
    status: int = 200
    error_body: str = ""
    tokenize: bool = True
    logprobs: bool = False  # each piece's chunk carries logprobs.content (logprob -0.5)
    streams_always: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    sent: int = 0
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    received: asyncio.Event = field(default_factory=asyncio.Event)  # a request came in
    url: str = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.received.set()
        self.authorizations.append(request.headers.get("Authorization"))
        if self.status != 200:
            return web.Response(status=self.status, text=self.error_body)
        if body.get("stream") is False and not self.streams_always:
            try:
                await asyncio.sleep(self.header_delay + self.delay * len(self.pieces))
            except asyncio.CancelledError:
                self.disconnected.set()
                raise
            return web.json_response(self.completion())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await asyncio.sleep(self.header_delay)
            await response.prepare(request)
            for thought in self.reasoning:
                await self._send(response, {"index": 0, "delta": {"reasoning_content": thought}})
            for piece in self.pieces:
                choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}}
                if self.logprobs:
                    entry = {"token": piece, "logprob": -0.5, "bytes": list(piece.encode())}
                    choice["logprobs"] = {"content": [{**entry, "top_logprobs": [entry]}]}
                await self._send(response, choice)
            for calls in self.tool_calls:
                await self._send(response, {"index": 0, "delta": {"tool_calls": calls}})
            finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]}
            await _event(response, finish)
            await _event(response, {"choices": [], "usage": self.usage()})
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": UPSTREAM_PROMPT_TOKENS,
            # + the end-of-turn token
            "completion_tokens": len(self.reasoning + self.pieces + self.tool_calls) + 1,
            "prompt_tokens_details": {"cached_tokens": UPSTREAM_CACHED_TOKENS},
        }
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage

    def completion(self) -> dict[str, Any]:
        """The streamed answer whole: its pieces joined, its tool call pieces merged per call."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.pieces) or None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        calls: dict[int, dict[str, Any]] = {}
        for piece in (item for pieces in self.tool_calls for item in pieces):
            call = calls.setdefault(
                piece["index"], {"type": "function", "function": {"name": "", "arguments": ""}}
            )
            call.update({"id": piece["id"]} if "id" in piece else {})
            for name, value in piece.get("function", {}).items():
                call["function"][name] += value
        if calls:
            message["tool_calls"] = [calls[index] for index in sorted(calls)]
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "finish_reason": self.finish_reason,
        }
        if self.logprobs:
            entries = [
                {"token": piece, "logprob": -0.5, "bytes": list(piece.encode())}
                for piece in self.pieces
            ]
            choice["logprobs"] = {"content": [{**e, "top_logprobs": [e]} for e in entries]}
        return {"object": "chat.completion", "choices": [choice], "usage": self.usage()}

    async def _send(self, response: web.StreamResponse, choice: dict[str, Any]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        await _event(response, {"choices": [choice]})
        self.sent += 1

    async def count_tokens(self, request: web.Request) -> web.Response:
        if not self.tokenize:
            return web.Response(status=404)
        body = await request.json()
        return web.json_response({"tokens": list(range(len(body["content"].split())))})


async def _event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/tokenize", fake.count_tokens)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/v1"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def proxy(upstream: FakeUpstream) -> AsyncIterator[OpenAIProxyEngine]:
    engine = OpenAIProxyEngine(
        upstream.url, api_key=API_KEY, model="fake-model", max_concurrency=2, timeout_seconds=5
    )
    yield engine
    await engine.close()


async def test_deltas_in_order_and_usage_from_the_upstream_minus_the_free_prompt(
    nc: Client,
    start_worker: StartWorker,
    route_name: str,
    upstream: FakeUpstream,
    proxy: OpenAIProxyEngine,
    read_usage_records: ReadUsageRecords,
) -> None:
    server = await start_worker(proxy, route=route_name)
    request = chat_request(
        "what is the answer", route=route_name, free_system_prompt="You are Regio.", max_tokens=9
    )
    chunks = await (await InferenceCall.open(nc, "de", route_name, request)).until_end()

    accepted, *deltas, final = chunks
    assert accepted.kind == ACCEPTED
    assert [(c.kind, c.sequence, c.text_delta) for c in deltas] == [
        (DELTA, i, piece) for i, piece in enumerate(PIECES, start=1)
    ]
    assert (final.kind, final.finish_reason) == (FINAL, inference_pb2.FINISH_REASON_STOP)
    free = 3 + SYSTEM_MESSAGE_OVERHEAD_TOKENS  # /tokenize: 3 words, + the system turn
    expected = (UPSTREAM_PROMPT_TOKENS - free, len(PIECES) + 1, free, UPSTREAM_CACHED_TOKENS - free)
    usage = final.usage
    assert (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.free_prompt_tokens,
        usage.cached_tokens,
    ) == expected
    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    assert (record.prompt_tokens, record.completion_tokens, record.free_prompt_tokens) == (
        expected[:3]
    )

    sent = upstream.requests[0]
    assert sent["messages"][0] == {"role": "system", "content": "You are Regio."}
    assert sent["messages"][-1] == {"role": "user", "content": "what is the answer"}
    assert (sent["model"], sent["max_tokens"], sent["stream"]) == ("fake-model", 9, True)
    assert sent["stream_options"] == {"include_usage": True}
    assert upstream.authorizations == [f"Bearer {API_KEY}"]
    timed = server.metrics.registry.get_sample_value(
        "regio_worker_time_to_first_token_seconds_count", {"route": route_name}
    )
    assert timed == 1.0


async def test_without_tokenize_the_free_prompt_bound_is_its_byte_count(
    nc: Client,
    start_worker: StartWorker,
    route_name: str,
    upstream: FakeUpstream,
    proxy: OpenAIProxyEngine,
) -> None:
    upstream.tokenize = False
    await start_worker(proxy, route=route_name)
    free_prompt = "Sei höflich."  # 13 UTF-8 bytes
    request = chat_request("hi", route=route_name, free_system_prompt=free_prompt)
    final = (await (await InferenceCall.open(nc, "de", route_name, request)).until_end())[-1]

    free = 13 + SYSTEM_MESSAGE_OVERHEAD_TOKENS
    assert final.finish_reason == inference_pb2.FINISH_REASON_STOP
    assert (final.usage.prompt_tokens, final.usage.free_prompt_tokens) == (
        UPSTREAM_PROMPT_TOKENS - free,
        free,
    )


async def test_cancel_closes_the_upstream_stream(
    nc: Client,
    start_worker: StartWorker,
    route_name: str,
    upstream: FakeUpstream,
    proxy: OpenAIProxyEngine,
) -> None:
    upstream.pieces, upstream.delay = ["x"] * 500, 0.02
    server = await start_worker(proxy, route=route_name)
    call = await InferenceCall.open(nc, "de", route_name, chat_request("go", route=route_name))
    assert (await call.next_chunk()).kind == ACCEPTED
    for _ in range(3):
        assert (await call.next_chunk()).kind == DELTA
    await call.cancel(server.identity.worker_id)
    rest = await call.until_end(wait_seconds=2)

    final = rest[-1]
    assert (final.kind, final.finish_reason) == (FINAL, inference_pb2.FINISH_REASON_CANCELLED)
    deltas_received = 3 + len(rest) - 1
    assert final.usage.completion_tokens == deltas_received < 20
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=2)
    assert upstream.sent < 20


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole answer"])
async def test_cancel_before_the_upstream_answers_stops_at_once(
    nc: Client,
    start_worker: StartWorker,
    route_name: str,
    upstream: FakeUpstream,
    proxy: OpenAIProxyEngine,
    stream: bool,
) -> None:
    # Still reading a long prompt; or generating a whole answer, which comes at its end.
    upstream.header_delay = 30.0
    server = await start_worker(proxy, route=route_name)
    request = chat_request("go", route=route_name, stream=stream)
    call = await InferenceCall.open(nc, "de", route_name, request)
    assert (await call.next_chunk()).kind == ACCEPTED
    await asyncio.wait_for(upstream.received.wait(), timeout=5)
    await call.cancel(server.identity.worker_id)
    (final,) = await call.until_end(wait_seconds=2)

    assert (final.kind, final.finish_reason) == (FINAL, inference_pb2.FINISH_REASON_CANCELLED)
    assert final.usage.completion_tokens == 0
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=2)
    assert server.load().slots_busy == 0


async def test_a_gateway_gone_while_the_upstream_generates_a_whole_answer_stops_the_call(
    nc: Client,
    start_worker: StartWorker,
    route_name: str,
    upstream: FakeUpstream,
    proxy: OpenAIProxyEngine,
    read_usage_records: ReadUsageRecords,
) -> None:
    """No delta comes before a whole answer's end, so nothing else would ask whether its
    gateway still reads: the worker checks on a timer."""
    upstream.header_delay = 30.0
    quick = ReaderCheckTiming(interval_seconds=0.1, timeout_seconds=0.5)
    server = await start_worker(proxy, route=route_name, reader_check=quick)
    request = chat_request("go", route=route_name, stream=False)
    call = await InferenceCall.open(nc, "de", route_name, request)
    assert (await call.next_chunk()).kind == ACCEPTED
    await asyncio.wait_for(upstream.received.wait(), timeout=5)
    await call.close()  # the gateway vanishes without a cancel (killed)

    await asyncio.wait_for(upstream.disconnected.wait(), timeout=3)
    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    assert record.finish_reason == inference_pb2.FINISH_REASON_CANCELLED
    assert not record.billable
    assert record.unbilled_reason == "reader_gone"
    assert server.load().slots_busy == 0


async def test_upstream_500_is_a_final_error_without_its_text(
    nc: Client,
    start_worker: StartWorker,
    route_name: str,
    upstream: FakeUpstream,
    proxy: OpenAIProxyEngine,
    read_usage_records: ReadUsageRecords,
) -> None:
    upstream.status, upstream.error_body = 500, f"internal error, key {API_KEY} at {upstream.url}"
    await start_worker(proxy, route=route_name)
    request = chat_request("hi", route=route_name)
    accepted, final = await (await InferenceCall.open(nc, "de", route_name, request)).until_end()

    assert accepted.kind == ACCEPTED
    assert (final.kind, final.finish_reason) == (FINAL, inference_pb2.FINISH_REASON_ERROR)
    assert final.error_message == "The model server failed (HTTP 500)."
    assert final.usage.completion_tokens == 0
    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    assert not record.billable


async def test_context_length_error_is_passed_on_as_such(
    upstream: FakeUpstream, proxy: OpenAIProxyEngine
) -> None:
    upstream.status = 400
    upstream.error_body = json.dumps(
        {"object": "error", "message": "This model's maximum context length is 2048 tokens."}
    )
    request = GenerationRequest("t-ctx", (ChatMessage("user", "long " * 10),))
    events = [event async for event in proxy.generate(request)]
    assert len(events) == 1 and isinstance(events[0], GenerationFinished)
    assert events[0].error_code == CONTEXT_LENGTH_EXCEEDED


async def test_upstream_down_is_a_final_error(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = OpenAIProxyEngine(f"http://127.0.0.1:{port}/v1", api_key=API_KEY, timeout_seconds=2)
    try:
        await start_worker(engine, route=route_name)
        request = chat_request("hi", route=route_name, free_system_prompt="free")
        chunks = await (await InferenceCall.open(nc, "de", route_name, request)).until_end()
    finally:
        await engine.close()

    final = chunks[-1]
    assert [c.kind for c in chunks] == [ACCEPTED, FINAL]
    assert final.finish_reason == inference_pb2.FINISH_REASON_ERROR
    assert final.error_message == "The model server is unreachable."
    assert str(port) not in final.error_message


async def test_concurrent_requests_share_the_session(
    nc: Client,
    start_worker: StartWorker,
    route_name: str,
    upstream: FakeUpstream,
    proxy: OpenAIProxyEngine,
) -> None:
    upstream.delay = 0.01
    await start_worker(proxy, route=route_name)
    calls = [
        await InferenceCall.open(nc, "de", route_name, chat_request(f"q{i}", route=route_name))
        for i in range(4)
    ]
    results = await asyncio.gather(*(call.until_end() for call in calls))
    for chunks in results:
        assert "".join(c.text_delta for c in chunks if c.kind == DELTA) == "".join(PIECES)
        assert chunks[-1].finish_reason == inference_pb2.FINISH_REASON_STOP
    assert len(upstream.requests) == 4


async def test_logprobs_and_logit_bias_are_forwarded_and_mapped_back(
    upstream: FakeUpstream, proxy: OpenAIProxyEngine
) -> None:
    upstream.logprobs = True
    request = GenerationRequest(
        "t-logprobs",
        (ChatMessage("user", "hi"),),
        top_logprobs=1,
        logit_bias=((42, -100.0),),
    )
    events = [event async for event in proxy.generate(request)]
    [sent] = upstream.requests
    assert sent["logprobs"] is True and sent["top_logprobs"] == 1
    assert sent["logit_bias"] == {"42": -100.0}
    deltas = [event for event in events if isinstance(event, TextDelta)]
    assert "".join(delta.text for delta in deltas) == "".join(PIECES)
    for delta in deltas:
        [entry] = delta.logprobs
        assert entry.token == delta.text.encode() and entry.logprob == -0.5
        assert [top.token for top in entry.top_logprobs] == [entry.token]


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
PNG_BYTES = b"\x89PNG\r\n\x1a\n not really a picture"


async def test_tools_reasoning_and_media_go_up_and_calls_and_reasoning_come_back(
    nc: Client,
    start_worker: StartWorker,
    route_name: str,
    upstream: FakeUpstream,
    proxy: OpenAIProxyEngine,
) -> None:
    upstream.reasoning = ["Rome", " is", " sunny", " today"]
    upstream.pieces = []
    upstream.tool_calls = [
        [{"index": 0, "id": "up-1", "type": "function", "function": {"name": "get_weather"}}],
        [{"index": 0, "function": {"arguments": '{"city":'}}],
        [{"index": 0, "function": {"arguments": ' "Rome"}'}}],
        [{"index": 1, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}],
    ]
    upstream.finish_reason = "tool_calls"
    upstream.reasoning_tokens = 4
    await start_worker(proxy, route=route_name)
    request = chat_request("Weather and time in Rome?", route=route_name)
    request.messages[0].media.append(
        inference_pb2.MediaPart(
            kind=inference_pb2.MediaPart.KIND_IMAGE,
            data=PNG_BYTES,
            mime_type="image/png",
            text_offset=len("Weather and time"),
        )
    )
    request.messages.extend(
        [
            inference_pb2.ChatMessage(
                role="assistant",
                tool_calls=[inference_pb2.ToolCall(id="call_old", name="get_time", arguments="{}")],
            ),
            inference_pb2.ChatMessage(role="tool", content="12:00", tool_call_id="call_old"),
            inference_pb2.ChatMessage(role="user", content="And the weather?"),
        ]
    )
    request.tools.extend(
        [
            inference_pb2.ToolDefinition(
                name="get_weather", parameters_json=json.dumps(WEATHER_SCHEMA)
            ),
            inference_pb2.ToolDefinition(name="get_time", description="The time"),
        ]
    )
    request.tool_choice.mode = inference_pb2.ToolChoice.MODE_REQUIRED
    request.reasoning.effort = inference_pb2.Reasoning.EFFORT_HIGH
    chunks = await (await InferenceCall.open(nc, "de", route_name, request)).until_end()

    deltas, final = [c for c in chunks if c.kind == DELTA], chunks[-1]
    assert "".join(c.reasoning_delta for c in deltas) == "Rome is sunny today"
    assert not any(c.text_delta for c in deltas)
    pieces = [(t.index, t.id, t.name, t.arguments) for c in deltas for t in c.tool_calls]
    assert pieces[:3] == [
        (0, "up-1", "get_weather", ""),
        (0, "", "", '{"city":'),
        (0, "", "", ' "Rome"}'),
    ]
    index, call_id, name, arguments = pieces[3]
    assert (index, name, arguments) == (1, "get_time", "{}")
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call_id), "made when the upstream gives none"
    assert (final.kind, final.finish_reason) == (FINAL, inference_pb2.FINISH_REASON_TOOL_CALLS)
    assert (final.usage.completion_tokens, final.usage.reasoning_tokens) == (9, 4)
    assert final.thinking_rescued == ""  # not possible through a proxy

    [sent] = upstream.requests
    assert sent["tools"][0]["function"] == {"name": "get_weather", "parameters": WEATHER_SCHEMA}
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is True
    assert sent["reasoning_effort"] == "high"
    assert sent["chat_template_kwargs"]["enable_thinking"] is True
    encoded = base64.b64encode(PNG_BYTES).decode()
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather and time"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}},
                {"type": "text", "text": " in Rome?"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_old",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "content": "12:00", "tool_call_id": "call_old"},
        {"role": "user", "content": "And the weather?"},
    ]


async def test_reasoning_without_a_count_is_counted_per_delta_and_off_turns_thinking_off(
    upstream: FakeUpstream, proxy: OpenAIProxyEngine
) -> None:
    upstream.reasoning = ["Hmm", "."]  # llama-server sends no reasoning_tokens
    events = [
        event
        async for event in proxy.generate(
            GenerationRequest("t-reasoning", (ChatMessage("user", "hi"),))
        )
    ]
    reasoning = [event.text for event in events if isinstance(event, ReasoningDelta)]
    assert reasoning == ["Hmm", "."]
    final = events[-1]
    assert isinstance(final, GenerationFinished)
    assert final.finish_reason is FinishReason.STOP
    assert final.usage.reasoning_tokens == 2
    [sent] = upstream.requests
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert "reasoning_effort" not in sent and "tools" not in sent


# -- a client that does not stream: one JSON answer from the upstream ---------------------------
async def test_a_client_that_does_not_stream_gets_the_upstreams_whole_answer(
    nc: Client,
    start_worker: StartWorker,
    route_name: str,
    upstream: FakeUpstream,
    proxy: OpenAIProxyEngine,
    read_usage_records: ReadUsageRecords,
) -> None:
    server = await start_worker(proxy, route=route_name)
    request = chat_request(
        "what is the answer", route=route_name, free_system_prompt="You are Regio.", stream=False
    )
    chunks = await (await InferenceCall.open(nc, "de", route_name, request)).until_end()

    final = chunks[-1]
    assert "".join(c.text_delta for c in chunks) == "".join(PIECES)
    assert (final.kind, final.finish_reason) == (FINAL, inference_pb2.FINISH_REASON_STOP)
    free = 3 + SYSTEM_MESSAGE_OVERHEAD_TOKENS
    expected = (UPSTREAM_PROMPT_TOKENS - free, len(PIECES) + 1, free)
    assert (
        final.usage.prompt_tokens,
        final.usage.completion_tokens,
        final.usage.free_prompt_tokens,
    ) == expected
    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    assert (record.prompt_tokens, record.completion_tokens, record.free_prompt_tokens) == expected
    [sent] = upstream.requests
    assert sent["stream"] is False and "stream_options" not in sent
    # Its text came whole: no first-token time or decode speed to measure.
    timed = server.metrics.registry.get_sample_value(
        "regio_worker_time_to_first_token_seconds_count", {"route": route_name}
    )
    assert timed in (None, 0.0)


async def test_a_whole_answer_brings_reasoning_tool_calls_and_logprobs_back(
    upstream: FakeUpstream, proxy: OpenAIProxyEngine
) -> None:
    upstream.reasoning = ["Rome", " is", " sunny"]
    upstream.tool_calls = [
        [{"index": 0, "id": "up-1", "type": "function", "function": {"name": "get_weather"}}],
        [{"index": 0, "function": {"arguments": '{"city": "Rome"}'}}],
        [{"index": 1, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}],
    ]
    upstream.finish_reason, upstream.reasoning_tokens, upstream.logprobs = "tool_calls", 3, True
    request = GenerationRequest(
        "t-whole", (ChatMessage("user", "Weather?"),), top_logprobs=1, stream=False
    )
    events = [event async for event in proxy.generate(request)]

    reasoning, text, weather, clock, final = events
    assert reasoning == ReasoningDelta("Rome is sunny")
    assert isinstance(text, TextDelta) and text.text == "".join(PIECES)
    assert [entry.token for entry in text.logprobs] == [piece.encode() for piece in PIECES]
    assert weather == ToolCallDelta(0, "up-1", "get_weather", '{"city": "Rome"}')
    assert isinstance(clock, ToolCallDelta)
    assert (clock.index, clock.name, clock.arguments) == (1, "get_time", "{}")
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", clock.id), "made when the upstream gives none"
    assert isinstance(final, GenerationFinished)
    assert final.finish_reason is FinishReason.TOOL_CALLS
    assert (final.usage.completion_tokens, final.usage.reasoning_tokens) == (
        len(upstream.reasoning + PIECES + upstream.tool_calls) + 1,
        3,
    )


async def test_an_upstream_that_streams_anyway_is_read_as_a_stream(
    upstream: FakeUpstream, proxy: OpenAIProxyEngine
) -> None:
    upstream.streams_always = True
    request = GenerationRequest("t-streams", (ChatMessage("user", "hi"),), stream=False)
    events = [event async for event in proxy.generate(request)]

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "".join(PIECES)
    final = events[-1]
    assert isinstance(final, GenerationFinished) and final.finish_reason is FinishReason.STOP
    assert final.usage.prompt_tokens == UPSTREAM_PROMPT_TOKENS


async def test_a_whole_answer_has_its_own_timeout(upstream: FakeUpstream) -> None:
    """The time between two reads of a stream does not bound a whole answer, its own does."""
    upstream.header_delay = 1.5
    engine = OpenAIProxyEngine(upstream.url, timeout_seconds=1.0, answer_timeout_seconds=5.0)
    impatient = OpenAIProxyEngine(upstream.url, timeout_seconds=5.0, answer_timeout_seconds=0.5)
    try:
        request = GenerationRequest("t-slow", (ChatMessage("user", "hi"),), stream=False)
        patient = [event async for event in engine.generate(request)][-1]
        cut = [event async for event in impatient.generate(request)][-1]
    finally:
        await engine.close()
        await impatient.close()

    assert isinstance(patient, GenerationFinished) and patient.finish_reason is FinishReason.STOP
    assert isinstance(cut, GenerationFinished) and cut.finish_reason is FinishReason.ERROR
    assert cut.error_message == MESSAGE_TIMEOUT
