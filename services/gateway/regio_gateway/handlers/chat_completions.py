"""`POST /v1/chat/completions`: authenticate, validate, hold credit, dispatch, answer.

Credit safety: the hold is released here whenever no worker took the request, or the worker
went silent; once a worker accepted it, the worker's usage record settles the hold (also when
the gateway cancels the generation: client gone, or a streaming client that stopped reading)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Protocol

import structlog
from aiohttp import web

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Route
from regio_common.config_records import ApiKeyRecord, ReasoningOutput, UsageLimits
from regio_common.errors import (
    CONTEXT_LENGTH_EXCEEDED,
    INVALID_LOGIT_BIAS,
    INVALID_MEDIA,
    INVALID_RESPONSE_FORMAT,
    INVALID_TOOLS,
    UNSUPPORTED_CONTENT,
    BillingUnavailable,
    ClientError,
    InvalidRequest,
    RegioError,
    ServerError,
    ServiceUnavailable,
    UpstreamTimeout,
)
from regio_common.http_middleware import TRANSACTION_HEADER, TRANSACTION_KEY, response_headers
from regio_gateway.answer_shaping import StreamShaper, assistant_message
from regio_gateway.auth import authenticate
from regio_gateway.dispatch import WorkerStream
from regio_gateway.handlers.body import read_json_body
from regio_gateway.handlers.request_limits import check_request_counts
from regio_gateway.handlers.routing import resolve_activation, route_and_suffix
from regio_gateway.hold_and_dispatch import HoldRefused, hold_and_dispatch
from regio_gateway.protocol.chat_completion import (
    FINISH_REASONS,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionUsage,
)
from regio_gateway.protocol.reasoning import ReasoningPlan
from regio_gateway.protocol.tools import ToolCallCollector
from regio_gateway.rate_limits import LimitRefusal, rate_limit_headers
from regio_gateway.regions import endpoint_region
from regio_gateway.state import STATE_KEY, GatewayState

log = structlog.get_logger()
COUNTRY_HEADER = "x-regio-country"
# Messages the worker left out of the middle of the conversation to fit the context.
CONTEXT_COMPRESSED_HEADER = "x-regio-context-compressed"
# Why the worker cut the reasoning and made the model answer: "budget" or "loop".
THINKING_RESCUED_HEADER = "x-regio-thinking-rescued"


class AnswerFormat(Protocol):
    """How a chat answer is written: as OpenAI's chat completion, or in another API's shape
    (the legacy text completions)."""

    def completion_json(self, completion: ChatCompletion) -> str: ...

    def chunk_json(self, chunk: ChatCompletionChunk) -> str | None:
        """One stream event's JSON; None when the chunk has nothing to say in this shape."""
        ...


class ChatAnswers:
    def completion_json(self, completion: ChatCompletion) -> str:
        return completion.to_json()

    def chunk_json(self, chunk: ChatCompletionChunk) -> str | None:
        return chunk.model_dump_json(exclude_none=True)


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    return await serve_chat(request, ChatCompletionRequest.parse, ChatAnswers())


async def serve_chat(
    request: web.Request,
    parse: Callable[[object], ChatCompletionRequest],
    answers: AnswerFormat,
) -> web.StreamResponse:
    """Authenticate, hold credit, dispatch to a worker and write its answer with `answers`."""
    arrived = time.perf_counter()
    state = request.app[STATE_KEY]
    key = authenticate(request, state.config)
    structlog.contextvars.bind_contextvars(account_id=key.account_id)
    account_limits = state.config.account_limits(key.account_id)
    # A key or account billing refused for its limit a moment ago is refused here, without a
    # billing call, until the refused window resets (see deny_cache).
    remembered = state.deny_cache.refusal_for(key, account_limits)
    if remembered is not None:
        response_headers(request).update(rate_limit_headers(remembered.headroom))
        raise remembered
    payload = await read_json_body(
        request, state.settings.max_body_bytes, state.settings.body_read_timeout_seconds
    )
    body = parse(payload)
    check_request_counts(body, state.settings)
    region = endpoint_region(request, state.catalogue, state.settings.default_region)
    route, reasoning, stream = await _dispatch_first_available(
        request, state, body, key, account_limits, region
    )
    transaction_id: str = request[TRANSACTION_KEY]
    # On the request's remaining lines, its access line included (one info line per request).
    structlog.contextvars.bind_contextvars(
        route=route.name, region=region, country=stream.country, worker_id=stream.worker_id
    )
    log.debug("dispatched")
    try:
        timing = _FirstToken(state, route.name, region, arrived)
        stream.delivers_deltas = body.stream
        if body.stream:
            return await _stream_answer(
                request, state, body, route.name, reasoning.output, stream, timing, answers
            )
        return await _json_answer(
            state, body, route.name, reasoning.output, stream, timing, answers
        )
    except UpstreamTimeout:
        # The worker went silent (likely gone): its usage record may never come.
        await state.billing.release(transaction_id, "worker silent")
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        log.info("client_disconnected")
        await stream.cancel()
        raise
    finally:
        await stream.close()


async def _dispatch_first_available(
    request: web.Request,
    state: GatewayState,
    body: ChatCompletionRequest,
    key: ApiKeyRecord,
    account_limits: UsageLimits,
    region: str,
) -> tuple[Route, ReasoningPlan, WorkerStream]:
    """Hold credit and hand the request to a worker, trying `model`, then each of `models`.

    Each attempt that holds credit gets its own transaction id (`<id>`, `<id>-2`, …), so that a
    released hold is never confused with the next one; the id of the attempt that is served
    becomes the response's `x-transaction-id`. When every candidate fails, the error of the
    first one is returned. A limit of the key or account refuses at once: the fallbacks would
    meet the same limits."""
    account_id = key.account_id
    first_error: RegioError | None = None
    base_id: str = request[TRANSACTION_KEY]
    holds = 0
    # Loaded once for all candidates; gated per route, before its hold (a bad image holds
    # nothing).
    request_media = state.media.for_request(body)
    for model in body.candidate_models:
        try:
            route, activation = resolve_activation(
                state.catalogue,
                state.config,
                account_id,
                model,
                region,
                key,
            )
            body.check_supported(route)
            _, effort_suffix = route_and_suffix(state.catalogue, model)
            reasoning = body.reasoning_request(effort_suffix).plan(
                route, activation.thinking, body.output_limit(route)
            )
            media = await request_media.for_route(route)
            transaction_id = base_id if holds == 0 else f"{base_id}-{holds + 1}"
            request[TRANSACTION_KEY] = transaction_id
            structlog.contextvars.bind_contextvars(transaction_id=transaction_id)
            inference = body.to_inference_request(
                transaction_id=transaction_id,
                account_id=account_id,
                route=route,
                region=region,
                free_system_prompt=activation.free_system_prompt,
                deadline_unix_ms=int(
                    (time.time() + state.settings.dispatch_timeout_seconds) * 1000
                ),
                media=media.by_message,
                reasoning=reasoning.to_proto(),
            )
            countries = state.catalogue.countries(region)
            try:
                held, stream = await hold_and_dispatch(
                    hold=partial(
                        state.billing.reserve,
                        transaction_id=inference.transaction_id,
                        account_id=account_id,
                        route=route.name,
                        region=region,
                        max_prompt_tokens=body.prompt_token_bound(media.token_bound(route)),
                        max_completion_tokens=body.output_limit(route),
                        ttl_seconds=state.settings.hold_ttl_seconds,
                        key_id=key.key_id,
                        key_limits=key.limits,
                        account_limits=account_limits,
                    ),
                    dispatch=partial(state.dispatcher.open, inference, countries),
                    release=partial(state.billing.release, inference.transaction_id),
                    dispatcher=state.dispatcher,
                    speculate=state.speculation.may_speculate(account_id),
                )
            except HoldRefused as refused:
                state.speculation.refused(account_id, refused.error)
                if isinstance(refused.error, LimitRefusal):
                    state.deny_cache.remember(refused.error, key, account_limits)
                    response_headers(request).update(rate_limit_headers(refused.error.headroom))
                raise refused.error from None
            except BaseException:
                holds += 1  # the dispatch failed and the hold was released
                raise
            holds += 1
            if held.HasField("headroom"):
                response_headers(request).update(rate_limit_headers(held.headroom))
            return route, reasoning, stream
        except (BillingUnavailable, LimitRefusal):
            raise  # no other model can be served either
        except (ClientError, ServiceUnavailable) as error:
            log.info("candidate_failed", model=model, code=error.code)
            first_error = first_error or error
    assert first_error is not None  # candidate_models is never empty
    raise first_error


def _completion_id(stream: WorkerStream) -> str:
    return f"chatcmpl-{stream.transaction_id}"


class _FirstToken:
    """Records the time from the request's arrival to its first generated text, once."""

    def __init__(self, state: GatewayState, model: str, region: str, arrived: float) -> None:
        self._metrics = state.metrics
        self._model = model  # a catalogue route name, never the client's raw `model`
        self._region = region
        self._arrived: float | None = arrived

    def see(self, chunk: inference_pb2.InferenceChunk) -> None:
        if self._arrived is not None and (
            chunk.text_delta
            or chunk.reasoning_delta
            or chunk.tool_calls
            # An answer whose first token ended it (e.g. end of turn at once): that token came
            # with the FINAL chunk.
            or (
                chunk.kind == inference_pb2.CHUNK_KIND_FINAL
                and chunk.finish_reason != inference_pb2.FINISH_REASON_ERROR
                and chunk.usage.completion_tokens > 0
            )
        ):
            elapsed = time.perf_counter() - self._arrived
            self._metrics.observe_first_token(self._model, self._region, elapsed)
            self._arrived = None


async def _json_answer(
    state: GatewayState,
    body: ChatCompletionRequest,
    model: str,
    reasoning_output: ReasoningOutput,
    stream: WorkerStream,
    timing: _FirstToken,
    answers: AnswerFormat,
) -> web.Response:
    text: list[str] = []
    reasoning: list[str] = []
    calls = ToolCallCollector()
    logprobs: list[inference_pb2.TokenLogprob] = []
    final: inference_pb2.InferenceChunk | None = None
    dropped = 0
    async for chunk in stream.chunks():
        timing.see(chunk)
        text.append(chunk.text_delta)
        reasoning.append(chunk.reasoning_delta)
        calls.add(chunk.tool_calls)
        logprobs.extend(chunk.logprobs)
        dropped = max(dropped, chunk.dropped_messages)
        if chunk.kind == inference_pb2.CHUNK_KIND_FINAL:
            final = chunk
    if final is None or final.finish_reason == inference_pb2.FINISH_REASON_ERROR:
        raise _worker_failure(final)
    state.metrics.observe_usage(model, final.usage.prompt_tokens, final.usage.completion_tokens)
    completion = ChatCompletion(
        id=_completion_id(stream),
        model=model,
        choices=[
            Choice(
                message=assistant_message(
                    "".join(text), "".join(reasoning), calls.calls(), reasoning_output
                ),
                finish_reason=FINISH_REASONS.get(final.finish_reason, "stop"),
                logprobs=ChoiceLogprobs.from_proto(logprobs) if body.logprobs else None,
            )
        ],
        usage=CompletionUsage.from_proto(final.usage),
        thinking_rescued=final.thinking_rescued or None,
    )
    rescued = {THINKING_RESCUED_HEADER: final.thinking_rescued} if final.thinking_rescued else {}
    return web.Response(
        text=answers.completion_json(completion),
        content_type="application/json",
        headers={COUNTRY_HEADER: stream.country, **_compression_headers(dropped), **rescued},
    )


def _compression_headers(dropped_messages: int) -> dict[str, str]:
    return {CONTEXT_COMPRESSED_HEADER: str(dropped_messages)} if dropped_messages else {}


def _worker_failure(final: inference_pb2.InferenceChunk | None) -> RegioError:
    detail = final.error_message if final is not None else "stream ended without a result"
    if final is not None and final.error_code == CONTEXT_LENGTH_EXCEEDED:
        return InvalidRequest(detail, param="messages", code=CONTEXT_LENGTH_EXCEEDED)
    if final is not None and final.error_code == INVALID_RESPONSE_FORMAT:
        return InvalidRequest(detail, param="response_format", code=INVALID_RESPONSE_FORMAT)
    if final is not None and final.error_code == INVALID_LOGIT_BIAS:
        return InvalidRequest(detail, param="logit_bias")
    if final is not None and final.error_code == INVALID_TOOLS:
        return InvalidRequest(detail, param="tools", code=INVALID_TOOLS)
    if final is not None and final.error_code == UNSUPPORTED_CONTENT:
        # The route advertises the capability but this worker has no projector for it: a
        # deployment mistake worth a warning; the client learns that the media cannot be read.
        log.warning("worker_cannot_read_media", detail=detail)
        return InvalidRequest(detail, param="messages", code=UNSUPPORTED_CONTENT)
    if final is not None and final.error_code == INVALID_MEDIA:
        return InvalidRequest(detail, param="messages")
    # The worker's detail may describe internals: it goes to the log, not to the client.
    log.error("generation_failed", detail=detail)
    return ServerError("The model failed to generate a response; please retry.")


def _sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


class _StalledReader(Exception):
    """The client stopped taking the stream's bytes for longer than the write timeout."""


class _StreamWriter:
    """Writes of one SSE response, each within the stream write timeout: a write waits only
    when the connection's buffers are full, that is when the client has stopped reading."""

    def __init__(self, response: web.StreamResponse, timeout_seconds: float) -> None:
        self._response = response
        self._timeout = timeout_seconds

    async def write(self, data: bytes) -> None:
        await self._within_timeout(self._response.write(data))

    async def write_eof(self, data: bytes = b"") -> None:
        await self._within_timeout(self._response.write_eof(data))

    async def _within_timeout(self, write: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await write
        except TimeoutError:
            raise _StalledReader from None


# Held events go out once they reach this size even while more of the worker's chunks wait.
MAX_HELD_BYTES = 16_384


class _ChunkWriter:
    """Builds the stream's chunks (one id and creation time for all) and writes each in the
    answer's format.

    An event is written as soon as it is built, unless the worker's next chunk has already
    arrived: then it waits for that chunk's event and both go in one write (a fast upstream's
    burst, or chunks that queued while the gateway was busy, cost one send and one wake-up of
    the client instead of one each). The end of the stream goes in one write with the events
    before it. No event waits for a chunk that has not arrived."""

    def __init__(
        self,
        raw: _StreamWriter,
        answers: AnswerFormat,
        completion_id: str,
        model: str,
        more_waiting: Callable[[], bool],
    ) -> None:
        self.raw = raw
        self._answers = answers
        self._id = completion_id
        self._model = model
        self._more_waiting = more_waiting
        self._created = int(time.time())
        self._held = b""  # events written together with the next ones

    def hold(
        self,
        delta: ChoiceDelta,
        finish_reason: str | None = None,
        usage: CompletionUsage | None = None,
        logprobs: ChoiceLogprobs | None = None,
        thinking_rescued: str | None = None,
    ) -> None:
        """A chunk's event, to go out with the next write."""
        self._held += self._event(delta, finish_reason, usage, logprobs, thinking_rescued)

    def hold_raw(self, data: bytes) -> None:
        self._held += data

    async def write_unless_more_waiting(self) -> None:
        """Writes what is held, unless the worker's next chunk is already here (and what is
        held is not large)."""
        if self._held and (len(self._held) >= MAX_HELD_BYTES or not self._more_waiting()):
            data, self._held = self._held, b""
            await self.raw.write(data)

    async def finish(self, data: bytes) -> None:
        """What is held, then `data`, then the end of the response: one write."""
        data, self._held = self._held + data, b""
        await self.raw.write_eof(data)

    def _event(
        self,
        delta: ChoiceDelta,
        finish_reason: str | None = None,
        usage: CompletionUsage | None = None,
        logprobs: ChoiceLogprobs | None = None,
        thinking_rescued: str | None = None,
    ) -> bytes:
        """The SSE event of one chunk in the answer's format (empty: nothing to say)."""
        choices = (
            []
            if usage is not None
            else [ChunkChoice(delta=delta, finish_reason=finish_reason, logprobs=logprobs)]
        )
        chunk = ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=choices,
            usage=usage,
            thinking_rescued=thinking_rescued,
        )
        data = self._answers.chunk_json(chunk)
        return b"" if data is None else _sse(data)


async def _stream_answer(
    request: web.Request,
    state: GatewayState,
    body: ChatCompletionRequest,
    model: str,
    reasoning_output: ReasoningOutput,
    stream: WorkerStream,
    timing: _FirstToken,
    answers: AnswerFormat,
) -> web.StreamResponse:
    # The headers wait for the worker's first chunk (its first text, or the end): it says
    # whether the conversation was compressed, and a failure before any text (e.g. a prompt
    # that cannot fit) is still answered with its HTTP status. The role chunk goes out with it.
    chunks = stream.chunks()
    first = await anext(chunks, None)
    if first is None or (
        first.kind == inference_pb2.CHUNK_KIND_FINAL
        and first.finish_reason == inference_pb2.FINISH_REASON_ERROR
    ):
        raise _worker_failure(first)
    response = web.StreamResponse(
        headers={
            **response_headers(request),
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            TRANSACTION_HEADER: request[TRANSACTION_KEY],
            COUNTRY_HEADER: stream.country,
            **_compression_headers(first.dropped_messages),
        }
    )
    await response.prepare(request)
    writer = _StreamWriter(response, state.settings.stream_write_timeout_seconds)
    try:
        await _stream_events(
            request,
            state,
            body,
            model,
            StreamShaper(reasoning_output),
            _chained(first, chunks),
            timing,
            _ChunkWriter(writer, answers, _completion_id(stream), model, stream.has_waiting_chunk),
        )
    except _StalledReader:
        # The worker slot must not wait for this client: stop the generation (its usage record
        # settles what was generated), then drop the connection, whose buffers are full.
        log.warning(
            "client_stalled",
            stream_write_timeout_seconds=state.settings.stream_write_timeout_seconds,
        )
        await stream.cancel()
        await stream.close()
        if request.transport is not None:
            request.transport.abort()
    return response


async def _chained(
    first: inference_pb2.InferenceChunk, rest: AsyncIterator[inference_pb2.InferenceChunk]
) -> AsyncIterator[inference_pb2.InferenceChunk]:
    yield first
    async for chunk in rest:
        yield chunk


async def _stream_events(
    request: web.Request,
    state: GatewayState,
    body: ChatCompletionRequest,
    model: str,
    shaper: StreamShaper,
    chunks: AsyncIterator[inference_pb2.InferenceChunk],
    timing: _FirstToken,
    writer: _ChunkWriter,
) -> None:
    writer.hold(ChoiceDelta(role="assistant", content=""))
    try:
        async for chunk in chunks:
            timing.see(chunk)
            if chunk.kind == inference_pb2.CHUNK_KIND_DELTA:
                delta = shaper.delta(chunk)
                if delta is not None or chunk.logprobs:
                    logprobs = (
                        ChoiceLogprobs.from_proto(list(chunk.logprobs)) if body.logprobs else None
                    )
                    writer.hold(delta or ChoiceDelta(), logprobs=logprobs)
                # (the role chunk goes out even should this chunk have shown nothing)
                await writer.write_unless_more_waiting()
                continue
            if chunk.finish_reason == inference_pb2.FINISH_REASON_ERROR:
                raise _worker_failure(chunk)
            state.metrics.observe_usage(
                model, chunk.usage.prompt_tokens, chunk.usage.completion_tokens
            )
            closing = shaper.close()
            if closing is not None:
                writer.hold(closing)
            writer.hold(
                ChoiceDelta(),
                FINISH_REASONS.get(chunk.finish_reason, "stop"),
                thinking_rescued=chunk.thinking_rescued or None,
            )
            if body.stream_options is not None and body.stream_options.include_usage:
                writer.hold(ChoiceDelta(), usage=CompletionUsage.from_proto(chunk.usage))
    except RegioError as error:
        # Headers are gone: the error travels as a last event, as OpenAI's API does.
        state.metrics.refused(error)
        if isinstance(error, UpstreamTimeout):
            await state.billing.release(request[TRANSACTION_KEY], "worker silent")
        writer.hold_raw(_sse(json.dumps(error.envelope(), separators=(",", ":"))))
    await writer.finish(_sse("[DONE]"))
