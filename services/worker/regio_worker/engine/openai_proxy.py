"""The engine that fronts an OpenAI-compatible server already running in the region (llama.cpp's
`llama-server`, vLLM, ...): every generation is one POST `/chat/completions` on a shared
aiohttp session (connection pooling), streamed when the client streams. A client that reads
the answer only at its end (`stream` false) gets it from one non-streamed upstream call: one
JSON answer instead of a chunk per token, so both the upstream and the worker write, read and
parse one message instead of dozens (measured: the worker's CPU per short answer -20 %). Its
wait is bounded by `answer_timeout_seconds` (the whole generation) instead of the time
between two chunks. An upstream that streams anyway (it ignored `stream: false`) is read as
a stream.

Usage comes from the upstream's usage chunk (`stream_options.include_usage`), or the usage of
its whole answer. The upstream cannot say how many of its prompt tokens were the free system
prompt, and one more upstream call without it would double the prompt work, so the free prompt
is never billed by subtracting an **upper bound** of its tokens (see `free_prompt_bound`):

- the upstream's `/tokenize` (llama-server and vLLM serve it next to `/v1`) counts the free
  prompt's text, cached per text; if it has no `/tokenize`, the free prompt's UTF-8 byte count
  stands in (a byte-level BPE or byte-fallback token covers at least one byte);
- plus `SYSTEM_MESSAGE_OVERHEAD_TOKENS` for the system turn's role markers around it;
- capped at the upstream's prompt_tokens. Billable prompt tokens = upstream prompt_tokens - that
  bound; cached_tokens likewise (the free prompt comes first, so a reused prefix covers it first).

Without a usage chunk (cancelled, or the stream broke), prompt tokens are unknown and billed as
0, completion tokens as the number of text deltas received (each holds at least one token; a
whole answer without usage, which no known server sends, counts one per part: text, reasoning,
each call).

`logprobs`, `top_logprobs` and `logit_bias` are forwarded as they came; the upstream's
`choices[0].logprobs.content` entries travel back with the text of their chunk (an upstream
that sends none gives an empty list). An upstream's 4xx that names `logit_bias` (a token id
outside its vocabulary) is the client's 400 on `logit_bias`.

Tools, reasoning and media (what llama-server and vLLM accept; both ignore fields they do not
know, except that vLLM validates `reasoning_effort`):

- Tools go in OpenAI's shape (`tools`, `tool_choice`, and `parallel_tool_calls` always set when
  tools may be called: llama-server's default is false, OpenAI's true). A named function goes
  as "required" with only that tool (llama-server reads no named choice). Conversation turns
  keep their `tool_calls` and `tool_call_id`. llama-server needs `--jinja` for tools; vLLM
  needs `--enable-auto-tool-choice --tool-call-parser …` for "auto".
- Streamed `delta.tool_calls` become ToolCallDelta events renumbered 0, 1, … in order of
  appearance: the first piece of a call carries the upstream's id (a `call_…` id is made when it
  has none; llama-server's ids are 32 letters and digits) and the name, later pieces only
  arguments. An answer that called tools finishes TOOL_CALLS even if the upstream said "stop".
- Effort OFF sends `chat_template_kwargs: {"enable_thinking": false}` (the switch of Qwen3-style
  templates on both servers) and no `reasoning_effort`: vLLM accepts only low/medium/high there
  and would refuse "none" on every request of a route without thinking. MEDIUM sends
  `reasoning_effort: "medium"`, HIGH and MAX "high" (neither server knows more), also as a
  chat-template variable (gpt-oss templates read it) next to `enable_thinking: true`.
  `delta.reasoning_content` (llama-server, vLLM) or else `delta.reasoning` (OpenRouter, newer
  vLLM, which may send both with the same text) become ReasoningDelta events; reasoning tokens
  come from `usage.completion_tokens_details.reasoning_tokens`, at least one per reasoning delta.
- Thinking rescue is not possible through a proxy: the upstream samples the whole answer, so
  the worker cannot end its reasoning and make it answer. The reasoning budget is not sent
  (neither server takes one per request); `thinking_rescued` stays empty.
- Media become content parts at their text offsets: images as `image_url` data URLs of their
  type, audio as `input_audio` with format wav or mp3. llama-server needs `--mmproj` for them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import structlog

from regio_common.errors import CONTEXT_LENGTH_EXCEEDED, GENERATION_FAILED, INVALID_LOGIT_BIAS
from regio_worker.engine.base import (
    ChatMessage,
    Engine,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    MediaKind,
    MediaPart,
    OutputFormat,
    ReasoningDelta,
    ReasoningEffort,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    ToolChoiceMode,
    ToolDefinition,
    TopLogprob,
    Usage,
)
from regio_worker.engine.tool_call_ids import new_tool_call_id

log = structlog.get_logger()

SYSTEM_MESSAGE_OVERHEAD_TOKENS = 8  # role markers of a chat template's system turn, generous
FREE_PROMPT_CACHE_SIZE = 256  # distinct free prompts whose token counts are remembered
TOKENIZE_TIMEOUT_SECONDS = 5.0
ERROR_BODY_LIMIT = 64 * 1024  # bytes of an upstream error body read for classification
READ_BUFFER_BYTES = 1 << 20  # longest SSE line accepted
DONE = "[DONE]"

# Upstream finish reasons that end a generation normally; everything else but these is STOP.
_LENGTH_REASONS = frozenset({"length", "max_tokens"})
_TOOL_CALL_REASONS = frozenset({"tool_calls", "function_call"})
# input_audio's `format` for the audio types the gateway delivers (and their aliases).
AUDIO_FORMATS = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
}
# `reasoning_effort` sent for each effort that reasons (module docstring).
UPSTREAM_EFFORTS = {
    ReasoningEffort.MEDIUM: "medium",
    ReasoningEffort.HIGH: "high",
    ReasoningEffort.MAX: "high",
}
_CONTEXT_LENGTH_MARKERS = (
    "context_length_exceeded",  # OpenAI's code
    "exceed_context_size",  # llama-server's error type
    "context length",  # vLLM: "This model's maximum context length is ..."
    "context size",
    "context window",
    "maximum context",
    "too many tokens",
    "prompt is too long",
)

MESSAGE_CONTEXT_LENGTH = (
    "The prompt and max_tokens do not fit the model's context; shorten the messages or lower "
    "max_tokens."
)
MESSAGE_UNREACHABLE = "The model server is unreachable."
MESSAGE_TIMEOUT = "The model server did not answer in time."
MESSAGE_BROKEN_STREAM = "The model server ended the answer unexpectedly."
MESSAGE_BAD_STREAM = "The model server sent an answer that could not be read."
MESSAGE_LOGIT_BIAS = "The model server refused logit_bias: a token id is not in its vocabulary."

_T = TypeVar("_T")


class UpstreamError(Exception):
    """The upstream refused or failed the request; `message` is safe to show the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- pure mapping (unit-tested) -----------------------------------------------------------------


def chat_completion_body(request: GenerationRequest, model: str | None) -> dict[str, Any]:
    """The upstream request: the free system prompt first as its own system message."""
    messages: list[dict[str, Any]] = []
    if request.free_system_prompt:
        messages.append({"role": "system", "content": request.free_system_prompt})
    messages += [upstream_message(message) for message in request.messages]
    body: dict[str, Any] = {"messages": messages, "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if model:
        body["model"] = model
    optional: dict[str, object] = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    if request.stop:
        body["stop"] = list(request.stop)
    if request.top_logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs
    if request.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in request.logit_bias}
    if request.output_format is OutputFormat.JSON_OBJECT:
        body["response_format"] = {"type": "json_object"}
    elif request.output_format is OutputFormat.JSON_SCHEMA:
        schema = json.loads(request.json_schema)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema},
        }
    body.update(tool_fields(request))
    body.update(reasoning_fields(request.reasoning_effort))
    return body


def upstream_message(message: ChatMessage) -> dict[str, Any]:
    """One conversation turn in OpenAI's shape."""
    # Chat templates of open models know no "developer" role; OpenAI treats it as system.
    role = "system" if message.role == "developer" else message.role
    upstream: dict[str, Any] = {"role": role, "content": message_content(message)}
    if message.tool_calls:
        upstream["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
        if not message.content:
            upstream["content"] = None  # OpenAI's way to say "only calls"
    if message.tool_call_id:
        upstream["tool_call_id"] = message.tool_call_id
    if message.name:
        upstream["name"] = message.name
    return upstream


def message_content(message: ChatMessage) -> str | list[dict[str, Any]]:
    """The text, or with media the content parts: text cut at each part's offset."""
    if not message.media:
        return message.content
    text = message.content
    parts: list[dict[str, Any]] = []
    cursor = 0
    for part in sorted(message.media, key=lambda part: part.text_offset):
        offset = min(max(part.text_offset, cursor), len(text))
        if offset > cursor:
            parts.append({"type": "text", "text": text[cursor:offset]})
        parts.append(media_content_part(part))
        cursor = offset
    if cursor < len(text):
        parts.append({"type": "text", "text": text[cursor:]})
    return parts


def media_content_part(part: MediaPart) -> dict[str, Any]:
    encoded = base64.b64encode(part.data).decode("ascii")
    if part.kind is MediaKind.IMAGE:
        url = f"data:{part.mime_type};base64,{encoded}"
        return {"type": "image_url", "image_url": {"url": url}}
    audio_format = AUDIO_FORMATS.get(part.mime_type, part.mime_type.rpartition("/")[2])
    return {"type": "input_audio", "input_audio": {"data": encoded, "format": audio_format}}


def tool_fields(request: GenerationRequest) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls`; nothing without tools (llama-server
    without --jinja refuses a tool_choice other than "auto"). A named function is sent as
    "required" with only that tool: the same promise, and llama-server reads no other
    tool_choice than "auto", "none" and "required"."""
    if not request.tools:
        return {}
    tools, choice = request.tools, request.tool_choice.value  # "auto", "none", "required"
    if request.tool_choice is ToolChoiceMode.FUNCTION:
        named = tuple(tool for tool in tools if tool.name == request.tool_choice_function)
        tools, choice = named or tools, ToolChoiceMode.REQUIRED.value
    fields: dict[str, Any] = {
        "tools": [upstream_tool(tool) for tool in tools],
        "tool_choice": choice,
    }
    if request.may_call_tools:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    return fields


def upstream_tool(tool: ToolDefinition) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = (
        json.loads(tool.parameters_json)
        if tool.parameters_json
        else {"type": "object", "properties": {}}
    )
    if tool.strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def reasoning_fields(effort: ReasoningEffort) -> dict[str, Any]:
    """How the upstream is told the effort (module docstring)."""
    level = UPSTREAM_EFFORTS.get(effort)
    if level is None:
        return {"chat_template_kwargs": {"enable_thinking": False}}
    return {
        "reasoning_effort": level,
        "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": level},
    }


@dataclass(frozen=True)
class SseEvent:
    event: str  # "message" unless the server named it ("error": llama-server's error lines)
    data: str


class SseDecoder:
    """Server-sent events from lines (without their line ends). Also accepts llama-server's
    non-standard `error: {...}` field as an event named "error"."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "error":
            self._event = "error"
            self._data.append(value)
        return None  # id, retry and unknown fields are ignored

    def flush(self) -> SseEvent | None:
        """At the end of the stream: an event not closed by a blank line."""
        return self._dispatch()

    def _dispatch(self) -> SseEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SseEvent(event, "\n".join(data))


@dataclass(frozen=True)
class UpstreamUsage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens; 0 also when the upstream does not say


@dataclass(frozen=True)
class UpstreamToolCall:
    """A piece of a streamed tool call as the upstream sent it (index and id may be missing)."""

    index: int | None = None
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class StreamChunk:
    text: str = ""
    finish_reason: str | None = None
    usage: UpstreamUsage | None = None
    done: bool = False
    logprobs: tuple[TokenLogprob, ...] = ()
    reasoning: str = ""
    tool_calls: tuple[UpstreamToolCall, ...] = ()

    @property
    def has_content(self) -> bool:
        return bool(self.text or self.logprobs or self.reasoning or self.tool_calls)


def parse_event(event: SseEvent) -> StreamChunk:
    """One SSE event of a chat completion stream; raises UpstreamError for error events."""
    if event.data.strip() == DONE:
        return StreamChunk(done=True)
    try:
        payload = json.loads(event.data)
    except ValueError:
        raise UpstreamError(GENERATION_FAILED, MESSAGE_BAD_STREAM) from None
    if not isinstance(payload, dict):
        raise UpstreamError(GENERATION_FAILED, MESSAGE_BAD_STREAM)
    if event.event == "error" or "error" in payload:
        raise upstream_error(None, json.dumps(payload.get("error", payload)))
    usage = parse_usage(payload.get("usage"))
    choices = payload.get("choices") or []
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        return StreamChunk(usage=usage)
    choice = choices[0]
    delta = choice.get("delta")
    delta = delta if isinstance(delta, dict) else {}
    finish_reason = choice.get("finish_reason")
    return StreamChunk(
        text=_text_field(delta, "content"),
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        usage=usage,
        logprobs=parse_logprobs(choice.get("logprobs")),
        # vLLM may send both names with the same text: one of them only.
        reasoning=_text_field(delta, "reasoning_content") or _text_field(delta, "reasoning"),
        tool_calls=parse_tool_calls(delta.get("tool_calls")),
    )


def parse_completion(data: bytes) -> StreamChunk:
    """A whole (non-streamed) chat completion as one chunk: its text, reasoning, tool calls
    (numbered in order), logprobs, finish reason and usage. Raises UpstreamError for an error
    answer or one that cannot be read."""
    try:
        payload = json.loads(data)
    except ValueError:
        raise UpstreamError(GENERATION_FAILED, MESSAGE_BAD_STREAM) from None
    if not isinstance(payload, dict):
        raise UpstreamError(GENERATION_FAILED, MESSAGE_BAD_STREAM)
    if "error" in payload:
        raise upstream_error(None, json.dumps(payload["error"]))
    choices = payload.get("choices")
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        raise UpstreamError(GENERATION_FAILED, MESSAGE_BAD_STREAM)
    choice = choices[0]
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    calls = message.get("tool_calls")
    numbered = (
        [{**call, "index": index} for index, call in enumerate(calls) if isinstance(call, dict)]
        if isinstance(calls, list)
        else None
    )
    finish_reason = choice.get("finish_reason")
    return StreamChunk(
        text=_text_field(message, "content"),
        # The whole answer came: one without a reason ended normally.
        finish_reason=finish_reason if isinstance(finish_reason, str) else "stop",
        usage=parse_usage(payload.get("usage")),
        logprobs=parse_logprobs(choice.get("logprobs")),
        reasoning=_text_field(message, "reasoning_content") or _text_field(message, "reasoning"),
        tool_calls=parse_tool_calls(numbered),
    )


def _text_field(delta: dict[str, Any], name: str) -> str:
    value = delta.get(name)
    return value if isinstance(value, str) else ""


def parse_tool_calls(raw: object) -> tuple[UpstreamToolCall, ...]:
    """A delta's `tool_calls` pieces; pieces that cannot be read are left out."""
    if not isinstance(raw, list):
        return ()
    pieces: list[UpstreamToolCall] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        index, call_id = item.get("index"), item.get("id")
        function = item.get("function")
        function = function if isinstance(function, dict) else {}
        name, arguments = function.get("name"), function.get("arguments")
        if isinstance(arguments, dict):  # some servers send the object itself
            arguments = json.dumps(arguments)
        pieces.append(
            UpstreamToolCall(
                index=index if isinstance(index, int) and not isinstance(index, bool) else None,
                id=call_id if isinstance(call_id, str) else "",
                name=name if isinstance(name, str) else "",
                arguments=arguments if isinstance(arguments, str) else "",
            )
        )
    return tuple(pieces)


def parse_logprobs(raw: object) -> tuple[TokenLogprob, ...]:
    """A chunk's `logprobs.content` entries; entries that cannot be read are left out."""
    content = raw.get("content") if isinstance(raw, dict) else None
    if not isinstance(content, list):
        return ()
    entries: list[TokenLogprob] = []
    for item in content:
        parsed = _token_and_logprob(item)
        if parsed is None:
            continue
        top_raw = item.get("top_logprobs")
        top = [_token_and_logprob(other) for other in top_raw] if isinstance(top_raw, list) else []
        entries.append(
            TokenLogprob(
                parsed[0],
                parsed[1],
                tuple(TopLogprob(*other) for other in top if other is not None),
            )
        )
    return tuple(entries)


def _token_and_logprob(item: object) -> tuple[bytes, float] | None:
    """(the token's bytes, its logprob) of an upstream entry; `bytes` preferred over `token`."""
    if not isinstance(item, dict):
        return None
    token, logprob, raw_bytes = item.get("token"), item.get("logprob"), item.get("bytes")
    if not isinstance(token, str) or not isinstance(logprob, int | float):
        return None
    if isinstance(raw_bytes, list) and all(
        isinstance(byte, int) and 0 <= byte < 256 for byte in raw_bytes
    ):
        return bytes(raw_bytes), float(logprob)
    return token.encode(), float(logprob)


def parse_usage(raw: object) -> UpstreamUsage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return UpstreamUsage(
        prompt,
        completion,
        cached_tokens=_detail(raw, "prompt_tokens_details", "cached_tokens"),
        reasoning_tokens=_detail(raw, "completion_tokens_details", "reasoning_tokens"),
    )


def _detail(usage: dict[str, Any], details_name: str, name: str) -> int:
    details = usage.get(details_name)
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) and value > 0 else 0


def map_finish_reason(upstream: str) -> FinishReason:
    if upstream in _LENGTH_REASONS:
        return FinishReason.LENGTH
    if upstream in _TOOL_CALL_REASONS:
        return FinishReason.TOOL_CALLS
    return FinishReason.STOP


@dataclass
class _OpenCall:
    index: int  # ours: 0, 1, ... in order of appearance
    id: str
    named: bool = False
    held_arguments: str = ""  # arguments that came before the name


class StreamTranslator:
    """Our events from the upstream's chunks, with counts for usage. Tool call pieces follow
    OpenAI's rule whatever the upstream did: the first piece of a call carries id and name,
    later pieces only arguments; a call is named by its index, else by its id, else it is the
    last one; arguments before the name are held back until it comes."""

    def __init__(self, new_id: Callable[[], str] = new_tool_call_id) -> None:
        self._new_id = new_id
        self._calls: dict[int | str, _OpenCall] = {}  # by upstream index, or id without one
        self._last: _OpenCall | None = None
        self.pieces = 0  # events made: each holds at least one token
        self.reasoning_pieces = 0
        self.tool_calls = 0  # calls announced with their name

    def events(self, chunk: StreamChunk) -> list[GenerationEvent]:
        events: list[GenerationEvent] = []
        if chunk.reasoning:
            events.append(ReasoningDelta(chunk.reasoning))
            self.reasoning_pieces += 1
        if chunk.text or chunk.logprobs:
            events.append(TextDelta(chunk.text, chunk.logprobs))
        for piece in chunk.tool_calls:
            delta = self._tool_call(piece)
            if delta is not None:
                events.append(delta)
        self.pieces += len(events)
        return events

    def finish_reason(self, upstream: str) -> FinishReason:
        """An answer that called tools finishes TOOL_CALLS even if the upstream said "stop"."""
        reason = map_finish_reason(upstream)
        if reason is FinishReason.STOP and self.tool_calls:
            return FinishReason.TOOL_CALLS
        return reason

    def _tool_call(self, piece: UpstreamToolCall) -> ToolCallDelta | None:
        call = self._call_of(piece)
        self._last = call
        if call.named:
            return ToolCallDelta(call.index, arguments=piece.arguments) if piece.arguments else None
        if not piece.name:
            call.held_arguments += piece.arguments
            return None
        call.named = True
        self.tool_calls += 1
        arguments, call.held_arguments = call.held_arguments + piece.arguments, ""
        return ToolCallDelta(call.index, call.id, piece.name, arguments)

    def _call_of(self, piece: UpstreamToolCall) -> _OpenCall:
        key: int | str | None = piece.index if piece.index is not None else piece.id or None
        if key is None and self._last is not None:
            return self._last
        if key is not None and key in self._calls:
            return self._calls[key]
        call = _OpenCall(index=len(self._calls), id=piece.id or self._new_id())
        self._calls[key if key is not None else call.id] = call
        return call


def is_context_length_error(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _CONTEXT_LENGTH_MARKERS)


def upstream_error(status: int | None, body: str) -> UpstreamError:
    """The client's view of an upstream error (HTTP status or an error event in the stream):
    a context-length complaint, or a generic failure. Never the upstream's own text."""
    if (status is None or 400 <= status < 500) and is_context_length_error(body):
        return UpstreamError(CONTEXT_LENGTH_EXCEEDED, MESSAGE_CONTEXT_LENGTH)
    if status is not None and 400 <= status < 500 and "logit_bias" in body.lower():
        return UpstreamError(INVALID_LOGIT_BIAS, MESSAGE_LOGIT_BIAS)
    where = f" (HTTP {status})" if status is not None else ""
    return UpstreamError(GENERATION_FAILED, f"The model server failed{where}.")


def free_prompt_byte_bound(text: str) -> int:
    """Tokens the free prompt's text can have at most without a tokenizer."""
    return len(text.encode("utf-8"))


def settle_usage(
    upstream: UpstreamUsage | None,
    free_text_tokens: int,
    has_free_prompt: bool,
    deltas: int,
    reasoning_deltas: int = 0,
) -> Usage:
    """Our usage from the upstream's (module docstring): the free prompt's upper bound is
    subtracted from the prompt and cached tokens, never more than there are. Reasoning tokens:
    the upstream's count, but at least one per reasoning delta received (llama-server does not
    count them), never more than the completion tokens."""
    if upstream is None:
        return Usage(completion_tokens=deltas, reasoning_tokens=reasoning_deltas)
    bound = free_text_tokens + SYSTEM_MESSAGE_OVERHEAD_TOKENS if has_free_prompt else 0
    free = min(bound, max(upstream.prompt_tokens, 0))
    prompt = max(upstream.prompt_tokens, 0) - free
    cached = min(max(upstream.cached_tokens - free, 0), prompt)
    completion = max(upstream.completion_tokens, 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        free_prompt_tokens=free,
        cached_tokens=cached,
        reasoning_tokens=min(max(upstream.reasoning_tokens, reasoning_deltas), completion),
    )


def tokenize_url(base_url: str) -> str:
    """llama-server and vLLM serve /tokenize at the root, beside /v1."""
    root = base_url.rstrip("/")
    root = root.removesuffix("/v1")
    return f"{root}/tokenize"


# --- the engine ---------------------------------------------------------------------------------


@dataclass
class _Call:
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    response: aiohttp.ClientResponse | None = None
    # The upstream call awaited before its response exists (see _unless_aborted).
    pending: asyncio.Future[Any] | None = None


@dataclass
class _Progress:
    translator: StreamTranslator = field(default_factory=StreamTranslator)
    usage: UpstreamUsage | None = None
    finish_reason: str | None = None


class _Cancelled(Exception):
    """The call was aborted."""


class OpenAIProxyEngine(Engine):
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        max_concurrency: int = 4,
        timeout_seconds: float = 60.0,
        answer_timeout_seconds: float = 600.0,
    ) -> None:
        """No I/O here: the HTTP session is made on first use, inside the event loop."""
        self._chat_url = f"{base_url.rstrip('/')}/chat/completions"
        self._tokenize_url = tokenize_url(base_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._slots = max_concurrency
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_seconds, sock_read=timeout_seconds
        )
        # A non-streamed answer's first byte comes when the whole generation is done.
        self._answer_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_seconds, sock_read=answer_timeout_seconds
        )
        self._session: aiohttp.ClientSession | None = None
        self._calls: dict[str, _Call] = {}
        self._free_prompt_tokens: OrderedDict[str, int] = OrderedDict()
        self._tokenize_available = True
        self._closed = False

    @property
    def slots_total(self) -> int:
        return self._slots

    def times_tokens(self, request: GenerationRequest) -> bool:
        return request.stream  # a non-streamed upstream answer comes whole

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Generations plus their /tokenize calls; connections are kept alive between calls.
            connector = aiohttp.TCPConnector(limit=2 * self._slots)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                timeout=self._timeout,
                read_bufsize=READ_BUFFER_BYTES,
                raise_for_status=False,
            )
        return self._session

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        call = _Call()
        self._calls[request.transaction_id] = call
        if self._closed:
            call.aborted.set()
        progress = _Progress()
        free_count: asyncio.Task[int] | None = None
        if request.free_system_prompt:
            free_count = asyncio.create_task(self.free_prompt_bound(request.free_system_prompt))
        try:
            try:
                async with contextlib.aclosing(self._stream(request, call, progress)) as chunks:
                    async for chunk in chunks:
                        for event in progress.translator.events(chunk):
                            yield event
            except _Cancelled:
                usage = await self._usage(progress, request, free_count)
                yield GenerationFinished(FinishReason.CANCELLED, usage)
                return
            except UpstreamError as error:
                usage = await self._usage(progress, request, free_count)
                yield GenerationFinished(FinishReason.ERROR, usage, error.message, error.code)
                return
            if progress.finish_reason is None:
                log.warning("upstream_stream_ended_early", deltas=progress.translator.pieces)
                usage = await self._usage(progress, request, free_count)
                yield GenerationFinished(
                    FinishReason.ERROR, usage, MESSAGE_BROKEN_STREAM, GENERATION_FAILED
                )
                return
            usage = await self._usage(progress, request, free_count)
            yield GenerationFinished(
                progress.translator.finish_reason(progress.finish_reason), usage
            )
        finally:
            self._calls.pop(request.transaction_id, None)
            if call.response is not None:
                call.response.close()
            if free_count is not None and not free_count.done():
                free_count.cancel()

    async def _stream(
        self, request: GenerationRequest, call: _Call, progress: _Progress
    ) -> AsyncGenerator[StreamChunk, None]:
        """The upstream's chunks that carry text, reasoning or tool calls (one for a whole
        answer); fills `progress`; raises _Cancelled or UpstreamError."""
        body = chat_completion_body(request, self._model)
        timeout = self._timeout if request.stream else self._answer_timeout
        try:
            response = await _unless_aborted(
                self._http().post(self._chat_url, json=body, timeout=timeout), call
            )
            call.response = response
            if call.aborted.is_set():
                raise _Cancelled
            if response.status >= 400:
                text = (await _read_at_most(response, ERROR_BODY_LIMIT)).decode(errors="replace")
                log.warning("upstream_http_error", status=response.status, body=text[:300])
                raise upstream_error(response.status, text)
            if not request.stream and response.content_type != "text/event-stream":
                whole = parse_completion(await _unless_aborted(response.read(), call))
                progress.usage, progress.finish_reason = whole.usage, whole.finish_reason
                if whole.has_content:
                    yield whole
                return
            decoder = SseDecoder()
            while True:
                line = await response.content.readline()
                if call.aborted.is_set():
                    raise _Cancelled
                event = decoder.feed(line.decode("utf-8").rstrip("\r\n")) if line else None
                if not line:
                    event = decoder.flush()
                if event is not None:
                    chunk = parse_event(event)
                    if chunk.done:
                        response.release()
                        return
                    if chunk.usage is not None:
                        progress.usage = chunk.usage
                    if chunk.finish_reason is not None:
                        progress.finish_reason = chunk.finish_reason
                    if chunk.has_content:
                        yield chunk
                if not line:
                    return  # end of the body without [DONE]
        except (_Cancelled, UpstreamError):
            raise
        except Exception as error:
            if call.aborted.is_set():
                raise _Cancelled from None
            if isinstance(error, TimeoutError):
                log.warning("upstream_timeout", error=type(error).__name__)
                raise UpstreamError(GENERATION_FAILED, MESSAGE_TIMEOUT) from None
            if isinstance(error, aiohttp.ClientConnectorError):
                log.warning("upstream_unreachable", error=str(error))
                raise UpstreamError(GENERATION_FAILED, MESSAGE_UNREACHABLE) from None
            if isinstance(error, aiohttp.ClientError | UnicodeDecodeError):
                log.warning("upstream_stream_failed", error=repr(error))
                raise UpstreamError(GENERATION_FAILED, MESSAGE_BROKEN_STREAM) from None
            raise

    async def _usage(
        self,
        progress: _Progress,
        request: GenerationRequest,
        free_count: asyncio.Task[int] | None,
    ) -> Usage:
        free_text_tokens = 0
        if free_count is not None and progress.usage is not None:
            try:
                free_text_tokens = await free_count
            except Exception:  # free_prompt_bound does not raise; the byte bound is always safe
                free_text_tokens = free_prompt_byte_bound(request.free_system_prompt)
        return settle_usage(
            progress.usage,
            free_text_tokens,
            bool(request.free_system_prompt),
            progress.translator.pieces,
            progress.translator.reasoning_pieces,
        )

    async def free_prompt_bound(self, text: str) -> int:
        """An upper bound of the free prompt text's tokens: the upstream's /tokenize count, or
        its UTF-8 byte count. Never raises."""
        cached = self._free_prompt_tokens.get(text)
        if cached is not None:
            self._free_prompt_tokens.move_to_end(text)
            return cached
        count = await self._tokenize_count(text) if self._tokenize_available else None
        if count is None:
            return free_prompt_byte_bound(text)
        self._free_prompt_tokens[text] = count
        if len(self._free_prompt_tokens) > FREE_PROMPT_CACHE_SIZE:
            self._free_prompt_tokens.popitem(last=False)
        return count

    async def _tokenize_count(self, text: str) -> int | None:
        # llama-server reads "content"/"add_special", vLLM "prompt"/"add_special_tokens";
        # each ignores the other's fields.
        body: dict[str, object] = {
            "content": text,
            "prompt": text,
            "add_special": False,
            "add_special_tokens": False,
        }
        if self._model:
            body["model"] = self._model
        try:
            async with self._http().post(
                self._tokenize_url,
                json=body,
                timeout=aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT_SECONDS),
            ) as response:
                if response.status in (404, 405, 501):
                    log.info("upstream_has_no_tokenize", status=response.status)
                    self._tokenize_available = False
                    return None
                if response.status >= 400:
                    return None
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.warning("upstream_tokenize_failed", error=repr(error))
            return None
        if isinstance(payload, dict):
            count = payload.get("count")
            if isinstance(count, int):
                return count
            tokens = payload.get("tokens")
            if isinstance(tokens, list):
                return len(tokens)
        return None

    def abort(self, transaction_id: str) -> None:
        call = self._calls.get(transaction_id)
        if call is None:
            return
        call.aborted.set()
        if call.pending is not None:
            call.pending.cancel()  # e.g. the upstream still reads a long prompt
        if call.response is not None:
            call.response.close()  # wakes a pending read; the upstream sees the disconnect

    async def close(self) -> None:
        self._closed = True
        for transaction_id in list(self._calls):
            self.abort(transaction_id)
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _unless_aborted(work: Awaitable[_T], call: _Call) -> _T:
    """`work`, or _Cancelled as soon as the call is aborted (e.g. while the upstream is still
    reading a long prompt before its response headers)."""
    task = asyncio.ensure_future(work)
    call.pending = task  # abort() cancels it
    if call.aborted.is_set():
        task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if call.aborted.is_set() and not (current is not None and current.cancelling()):
            raise _Cancelled from None
        raise  # this coroutine itself was cancelled
    finally:
        call.pending = None


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    data = b""
    while len(data) < limit:
        piece = await response.content.read(limit - len(data))
        if not piece:
            break
        data += piece
    return data
