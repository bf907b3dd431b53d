"""A fake engine for tests of the serving path: deterministic answers driven by the request, one
"token" per piece, at a configurable pace, with honest counts.

What it answers (the script, see `script_for`):

- Reasoning effort not OFF: first the REASONING_PIECES as reasoning. A reasoning budget smaller
  than them (the client's, else the llama engine's default share of max_tokens) cuts the
  reasoning there and the generation reports `thinking_rescued="budget"`, as the llama engine's
  rescue does.
- The last message is a `tool` result: the text "The tool said: <its content>", one piece per
  word, so a tool round trip completes.
- Else tools with tool_choice auto, required or a named function: a call of the named (else the
  first) tool; with "required", parallel calls allowed and two or more tools, one call of each
  of the first two. Arguments fill the schema's required properties (strings: the last user
  message's text, numbers 1, booleans true, an enum or const its first value, others null).
  Each call streams as three pieces: id and name, then the arguments JSON in two halves; the
  generation finishes with TOOL_CALLS.
- Else the configured pieces (DEFAULT_PIECES). Text answers start with a piece describing the
  media the messages brought, e.g. `[media: image/png 64x32, audio/wav 1.0s] ` (see
  media_description.py).

Token counting is by whitespace-separated words: prompt_tokens counts the words of the messages,
free_prompt_tokens those of the free system prompt; completion_tokens counts the pieces sent,
reasoning_tokens those of the reasoning. With logprobs, every text piece has the
log-probability SCRIPTED_LOGPROB and is the most likely of its top_logprobs, followed by
alternatives " alt1", " alt2", ... with lower ones; logit_bias is accepted and ignored."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from regio_worker.engine.base import (
    ChatMessage,
    Engine,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
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
from regio_worker.engine.media_description import describe_media
from regio_worker.engine.reasoning import reasoning_budget
from regio_worker.engine.tool_call_ids import new_tool_call_id

DEFAULT_PIECES = ("Hello", " from", " the", " scripted", " worker", ".")
REASONING_PIECES = ("Thinking", " it", " over", ".")
TOOL_RESULT_PREFIX = "The tool said: "
PARALLEL_CALLS = 2  # calls made for tool_choice "required" with parallel calls allowed
SCRIPTED_LOGPROB = -0.125  # exact in float32, as the protocol carries it
# Values for the required properties of a tool's arguments, by JSON schema type ("string": the
# last user message).
_SCHEMA_TYPE_VALUES: dict[str, object] = {"number": 1, "integer": 1, "boolean": True}
_WORDS = re.compile(r"\s*\S+")

Piece = TextDelta | ReasoningDelta | ToolCallDelta


class ScriptedEngineFailure(RuntimeError):
    """Raised on purpose by a ScriptedEngine configured with `fail_after_pieces`."""


@dataclass(frozen=True)
class Script:
    """What a generation sends, one token per piece, if nothing stops it first."""

    pieces: tuple[Piece, ...]
    finish_reason: FinishReason = FinishReason.STOP
    thinking_rescued: str = ""


class ScriptedEngine(Engine):
    def __init__(
        self,
        pieces: Sequence[str] = DEFAULT_PIECES,
        *,
        delay_seconds: float = 0.0,
        slots: int = 1,
        fail_after_pieces: int | None = None,
    ) -> None:
        self._pieces = tuple(pieces)
        self._delay = delay_seconds
        self._slots = slots
        self._fail_after = fail_after_pieces
        self._aborted: set[str] = set()
        self._running: set[str] = set()
        self.requests: list[GenerationRequest] = []  # what it was asked, for assertions

    @property
    def slots_total(self) -> int:
        return self._slots

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        self._running.add(request.transaction_id)
        free_tokens = _word_count(request.free_system_prompt)
        prompt_tokens = sum(_word_count(message.content) for message in request.messages)
        script = script_for(request, self._pieces)
        limit = len(script.pieces) if request.max_tokens is None else request.max_tokens
        sent = reasoning_sent = 0
        finish = script.finish_reason
        try:
            for piece in script.pieces:
                if request.transaction_id in self._aborted:
                    finish = FinishReason.CANCELLED
                    break
                if sent >= limit:
                    finish = FinishReason.LENGTH
                    break
                if self._fail_after is not None and sent >= self._fail_after:
                    raise ScriptedEngineFailure(f"scripted failure after {sent} pieces")
                if self._delay:
                    await asyncio.sleep(self._delay)
                sent += 1
                if isinstance(piece, ReasoningDelta):
                    reasoning_sent += 1
                if isinstance(piece, TextDelta):
                    piece = TextDelta(piece.text, _logprobs(piece.text, request.top_logprobs))
                yield piece
            usage = Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=sent,
                free_prompt_tokens=free_tokens,
                reasoning_tokens=reasoning_sent,
            )
            yield GenerationFinished(finish, usage, thinking_rescued=script.thinking_rescued)
        finally:
            self._running.discard(request.transaction_id)
            self._aborted.discard(request.transaction_id)

    def abort(self, transaction_id: str) -> None:
        if transaction_id in self._running:
            self._aborted.add(transaction_id)

    async def close(self) -> None:
        self._aborted.update(self._running)


# --- the script (pure) ----------------------------------------------------------------------------


def script_for(request: GenerationRequest, text_pieces: Sequence[str] = DEFAULT_PIECES) -> Script:
    reasoning, rescued = _reasoning(request)
    last = request.messages[-1] if request.messages else None
    if last is not None and last.role == "tool":
        answer: tuple[Piece, ...] = _text(request, _word_pieces(TOOL_RESULT_PREFIX + last.content))
        return Script((*reasoning, *answer), thinking_rescued=rescued)
    if request.may_call_tools:
        calls = _tool_calls(request)
        return Script((*reasoning, *calls), FinishReason.TOOL_CALLS, rescued)
    return Script((*reasoning, *_text(request, text_pieces)), thinking_rescued=rescued)


def _reasoning(request: GenerationRequest) -> tuple[tuple[ReasoningDelta, ...], str]:
    """The reasoning pieces, and "budget" when the budget cut them short."""
    if request.reasoning_effort is ReasoningEffort.OFF:
        return (), ""
    if request.max_tokens is not None:
        budget: int | None = reasoning_budget(
            request.reasoning_effort, request.reasoning_budget, request.max_tokens
        )
    else:
        budget = request.reasoning_budget
    pieces = tuple(ReasoningDelta(text) for text in REASONING_PIECES)
    if budget is not None and budget < len(pieces):
        return pieces[:budget], "budget"
    return pieces, ""


def _text(request: GenerationRequest, pieces: Sequence[str]) -> tuple[TextDelta, ...]:
    media = describe_media(request.messages)
    prefix = (f"{media} ",) if media else ()
    return tuple(TextDelta(text) for text in (*prefix, *pieces))


def _word_pieces(text: str) -> tuple[str, ...]:
    """One piece per word, each with the whitespace before it."""
    return tuple(_WORDS.findall(text))


def _tool_calls(request: GenerationRequest) -> tuple[ToolCallDelta, ...]:
    tools = _called_tools(request)
    user_text = _last_user_text(request.messages)
    pieces: list[ToolCallDelta] = []
    for index, tool in enumerate(tools):
        arguments = json.dumps(tool_arguments(tool, user_text))
        half = len(arguments) // 2
        pieces += [
            ToolCallDelta(index, new_tool_call_id(), tool.name, ""),
            ToolCallDelta(index, arguments=arguments[:half]),
            ToolCallDelta(index, arguments=arguments[half:]),
        ]
    return tuple(pieces)


def _called_tools(request: GenerationRequest) -> tuple[ToolDefinition, ...]:
    if request.tool_choice is ToolChoiceMode.FUNCTION:
        named = [tool for tool in request.tools if tool.name == request.tool_choice_function]
        return (named[0] if named else request.tools[0],)
    if request.tool_choice is ToolChoiceMode.REQUIRED and request.parallel_tool_calls:
        return request.tools[:PARALLEL_CALLS]
    return request.tools[:1]


def tool_arguments(tool: ToolDefinition, user_text: str) -> dict[str, object]:
    """An arguments object with a value for every required property of the tool's schema."""
    try:
        schema = json.loads(tool.parameters_json) if tool.parameters_json else {}
    except ValueError:
        schema = {}
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    names = (
        [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
    )
    return {name: _value_for(properties.get(name), user_text) for name in names}


def _value_for(schema: Any, user_text: str) -> object:
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):  # e.g. ["string", "null"]: the first real type
        kind = next((item for item in kind if item != "null"), None)
    if kind == "string":
        return user_text
    return _SCHEMA_TYPE_VALUES.get(kind) if isinstance(kind, str) else None


def _last_user_text(messages: Sequence[ChatMessage]) -> str:
    return next((message.content for message in reversed(messages) if message.role == "user"), "")


def _logprobs(piece: str, top_logprobs: int | None) -> tuple[TokenLogprob, ...]:
    if top_logprobs is None:
        return ()
    token = piece.encode()
    top = [TopLogprob(token, SCRIPTED_LOGPROB)]
    top += [TopLogprob(f" alt{rank}".encode(), -2.0 - rank) for rank in range(1, top_logprobs)]
    return (TokenLogprob(token, SCRIPTED_LOGPROB, tuple(top[:top_logprobs])),)


def _word_count(text: str) -> int:
    return len(text.split())
