"""The engine interface the server drives, and the values crossing it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from enum import StrEnum


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens (or the context) reached
    CANCELLED = "cancelled"  # aborted by a cancel request
    ERROR = "error"


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"  # any JSON object
    JSON_SCHEMA = "json_schema"  # JSON matching GenerationRequest.json_schema


@dataclass(frozen=True)
class GenerationRequest:
    transaction_id: str
    messages: tuple[ChatMessage, ...]
    free_system_prompt: str = ""
    max_tokens: int | None = None  # None: as many as fit in the context
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    output_format: OutputFormat = OutputFormat.TEXT
    json_schema: str = ""  # with OutputFormat.JSON_SCHEMA: the schema as JSON text
    # Leave messages out of the middle of a conversation too long for the context (see
    # context_fit.py) rather than fail; False: the client's `transforms: []`.
    middle_out: bool = True
    # None: no log-probabilities (nothing is computed); otherwise every token's, with this many
    # (0-20) most likely alternatives.
    top_logprobs: int | None = None
    # Token id -> bias in [-100, 100] added to its logit before sampling.
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def logprobs(self) -> bool:
        return self.top_logprobs is not None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0  # billable: the free system prompt is excluded
    completion_tokens: int = 0  # every sampled token
    free_prompt_tokens: int = 0
    cached_tokens: int = 0  # billable prompt tokens reused from the KV cache


@dataclass(frozen=True)
class TopLogprob:
    token: bytes  # the token's bytes (a token may hold part of a UTF-8 character)
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability and the most likely tokens at its position."""

    token: bytes
    logprob: float
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str
    # With GenerationRequest.logprobs: the tokens whose text is in `text` (a token whose text
    # is split over two deltas comes with the first; `text` may be empty at the end for
    # tokens without text).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ContextCompressed:
    """Before any text: the conversation did not fit the context, so `dropped_messages` of
    its middle were left out of the prompt (engines that count tokens only)."""

    dropped_messages: int


@dataclass(frozen=True)
class GenerationFinished:
    """Always the last event of a generation."""

    finish_reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    error_message: str = ""
    # With ERROR: regio_common.errors.CONTEXT_LENGTH_EXCEEDED, INVALID_RESPONSE_FORMAT,
    # INVALID_LOGIT_BIAS or GENERATION_FAILED.
    error_code: str = ""
    # Set when tokens were produced but must not be charged (e.g. "invalid_json").
    unbilled_reason: str = ""


GenerationEvent = TextDelta | ContextCompressed | GenerationFinished


class Engine(ABC):
    """Generates text for requests. Implementations end every generation with exactly one
    GenerationFinished event, also on failure, after zero or more TextDelta events (preceded by
    one ContextCompressed event when the prompt was compressed to fit)."""

    @property
    @abstractmethod
    def slots_total(self) -> int:
        """Generations that can run at the same time."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream the events of one generation (an async generator: aclose() stops it)."""

    @abstractmethod
    def abort(self, transaction_id: str) -> None:
        """Stop the generation of `transaction_id` soon (it then finishes as cancelled)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the model; no generation may run any more."""
