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
    TOOL_CALLS = "tool_calls"  # the answer ends with one or more tool calls


class MediaKind(StrEnum):
    IMAGE = "image"
    AUDIO = "audio"


@dataclass(frozen=True)
class MediaPart:
    """An image or audio clip of a message, fetched/decoded and checked by the gateway (PDF
    pages arrive as images)."""

    kind: MediaKind
    data: bytes
    mime_type: str
    text_offset: int  # characters of the message's content that come before it


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of the arguments object


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    # An assistant turn that called tools; a "tool" turn answers `tool_call_id`.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""
    media: tuple[MediaPart, ...] = ()


@dataclass(frozen=True)
class ToolDefinition:
    name: str
    description: str = ""
    parameters_json: str = ""  # JSON schema of the arguments; empty: any object
    strict: bool = False


class ToolChoiceMode(StrEnum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    FUNCTION = "function"  # the one named by GenerationRequest.tool_choice_function


class ReasoningEffort(StrEnum):
    OFF = "off"
    MEDIUM = "medium"
    HIGH = "high"
    MAX = "max"


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
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice: ToolChoiceMode = ToolChoiceMode.AUTO
    tool_choice_function: str = ""  # with ToolChoiceMode.FUNCTION
    parallel_tool_calls: bool = True  # False: at most one call
    reasoning_effort: ReasoningEffort = ReasoningEffort.OFF
    # Most tokens of the reasoning phase before it is cut (thinking rescue); None: the engine's
    # default share of max_tokens for the effort.
    reasoning_budget: int | None = None
    # The client reads the answer as it is generated; False: only at its end, so an engine may
    # produce it all at once (the openai_proxy engine then asks its upstream for one JSON answer).
    stream: bool = True

    @property
    def logprobs(self) -> bool:
        return self.top_logprobs is not None

    @property
    def may_call_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice is not ToolChoiceMode.NONE


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0  # billable: the free system prompt is excluded
    completion_tokens: int = 0  # every sampled token
    free_prompt_tokens: int = 0
    cached_tokens: int = 0  # billable prompt tokens reused from the KV cache
    reasoning_tokens: int = 0  # of completion_tokens, those of the reasoning phase


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
class ReasoningDelta:
    """Text of the reasoning phase (without its start/end markers)."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call, OpenAI's way: the first piece of a call (by `index`, 0-based in
    the answer) carries `id` and `name`; later pieces of the same index only append to
    `arguments`. An engine may send a whole call as one piece."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


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
    # Why the reasoning phase was cut and the model made to answer ("budget", "loop"); "".
    thinking_rescued: str = ""


GenerationEvent = (
    TextDelta | ReasoningDelta | ToolCallDelta | ContextCompressed | GenerationFinished
)


class Engine(ABC):
    """Generates text for requests. Implementations end every generation with exactly one
    GenerationFinished event, also on failure, after zero or more TextDelta, ReasoningDelta and
    ToolCallDelta events (preceded by one ContextCompressed event when the prompt was
    compressed to fit). Reasoning comes before the answer; an answer with tool calls finishes
    with FinishReason.TOOL_CALLS."""

    @property
    @abstractmethod
    def slots_total(self) -> int:
        """Generations that can run at the same time."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream the events of one generation (an async generator: aclose() stops it)."""

    def times_tokens(self, request: GenerationRequest) -> bool:
        """Whether the events of `request` come as its tokens are made, so that the time to its
        first token and its decode speed can be measured (False: its answer comes whole)."""
        return True

    @abstractmethod
    def abort(self, transaction_id: str) -> None:
        """Stop the generation of `transaction_id` soon (it then finishes as cancelled)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the model; no generation may run any more."""
