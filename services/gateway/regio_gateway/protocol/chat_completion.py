"""`POST /v1/chat/completions`: request and response models, with OpenAI's names."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Route
from regio_common.errors import InvalidRequest
from regio_common.validation import parse_body
from regio_gateway.protocol.content_parts import MessageContent, joined_text
from regio_gateway.protocol.reasoning import (
    UNSUPPORTED_PARAMETER,
    Effort,
    ReasoningOptions,
    ReasoningRequest,
    SuffixEffort,
)
from regio_gateway.protocol.tools import (
    ChoiceDeltaToolCall,
    Tool,
    ToolCall,
    ToolChoice,
    check_tool_request,
    check_tool_turns,
    tool_choice_proto,
    tool_turn_token_bound,
    tools_token_bound,
)

# Optional request fields with their names in a route's `supported_parameters`.
OPTIONAL_PARAMETERS = (
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "reasoning",
    "reasoning_effort",
    "logprobs",
    "top_logprobs",
    "logit_bias",
)
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS_ENTRIES = 300
# logit_bias: token ids as JSON object keys (decimal, at most 9 digits: they travel as int32),
# biases in [-100, 100]. Ids beyond the model's vocabulary are refused by the worker.
TokenIdKey = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,8})$")]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]
LogitBiasMap = Annotated[
    dict[TokenIdKey, Bias],
    Field(max_length=MAX_LOGIT_BIAS_ENTRIES, json_schema_extra={"additionalProperties": False}),
]
# Tokens a chat template adds around one message, at most (role markers, separators).
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_PROMPT = 8


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # Text, or content parts: text, and on routes with the capability image_url, file (PDF) and
    # input_audio (regio_gateway.media loads those; `text` is the text parts joined).
    content: MessageContent | None = None
    name: str | None = None
    # An assistant message that called tools (its content may be null), and a tool message's
    # answer to one of those calls.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return joined_text(self.content)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    # `schema` shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: free text, any JSON object, or JSON matching a schema. JSON
    is enforced by grammar-constrained decoding in the worker."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is required with type 'json_schema', and only then")
        return self

    def to_proto(self) -> inference_pb2.ResponseFormat:
        if self.type == "json_object":
            return inference_pb2.ResponseFormat(kind=inference_pb2.ResponseFormat.KIND_JSON_OBJECT)
        if self.json_schema is not None:
            return inference_pb2.ResponseFormat(
                kind=inference_pb2.ResponseFormat.KIND_JSON_SCHEMA,
                json_schema=json.dumps(self.json_schema.json_schema),
            )
        return inference_pb2.ResponseFormat()


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Unknown fields are ignored, as most OpenAI-compatible servers do, so that clients which
    # send vendor extensions keep working.
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, min_length=1)
    # Fallbacks tried in order when `model` cannot be served (not activated here, no capacity).
    models: list[str] | None = Field(None, min_length=1, max_length=8)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # proto int64
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1, le=1)
    user: str | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, min_length=1)
    # "auto" (the default with tools), "none", "required", or one named function.
    tool_choice: ToolChoice | None = None
    # false: at most one tool call per answer.
    parallel_tool_calls: bool | None = None
    # OpenRouter's reasoning object, and OpenAI's shorthand; "none"/"minimal"/"low": no
    # reasoning, "medium", "high" (deep), "max" (deepest).
    reasoning: ReasoningOptions | None = None
    reasoning_effort: Effort | None = None
    # Log-probabilities of the answer's tokens (and of the `top_logprobs` most likely
    # alternatives at each position; requires `logprobs: true`).
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    logit_bias: LogitBiasMap | None = None
    # OpenRouter's prompt transforms: "middle-out" (the default here) leaves messages out of the
    # middle of a conversation too long for the model's context; [] turns it off (400
    # context_length_exceeded instead).
    transforms: list[Literal["middle-out"]] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return stop

    @classmethod
    def parse(cls, payload: object) -> ChatCompletionRequest:
        """Validate a decoded JSON body; any problem becomes a 400 naming the parameter."""
        try:
            request = parse_body(cls, payload)
        except InvalidRequest as error:
            if error.param is not None and error.param.startswith("logit_bias."):
                # A bad key or bias: the parameter is logit_bias (a key is no parameter name).
                raise InvalidRequest(
                    "Invalid value for 'logit_bias': each key must be a token id (a decimal "
                    "integer) and each value a bias from -100 to 100.",
                    param="logit_bias",
                ) from None
            if error.param is not None and error.param.startswith("tool_choice."):
                # Which member of the union failed is no help: say what is accepted.
                raise InvalidRequest(
                    "Invalid value for 'tool_choice': expected 'auto', 'none', 'required' or "
                    '{"type": "function", "function": {"name": "<a tool\'s name>"}}.',
                    param="tool_choice",
                ) from None
            raise
        if not request.candidate_models:
            raise InvalidRequest("Missing required parameter: 'model'.", param="model")
        if request.top_logprobs is not None and not request.logprobs:
            raise InvalidRequest(
                "Invalid value for 'top_logprobs': 'logprobs' must be true when 'top_logprobs' "
                "is set.",
                param="top_logprobs",
            )
        check_tool_request(request.tools, request.tool_choice)
        check_tool_turns(request.messages)
        return request

    @property
    def candidate_models(self) -> list[str]:
        """`model`, then the `models` fallbacks, each once."""
        names = ([self.model] if self.model else []) + (self.models or [])
        return list(dict.fromkeys(names))

    @property
    def top_logprobs_requested(self) -> int | None:
        """None: no log-probabilities; otherwise how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def middle_out(self) -> bool:
        return self.transforms is None or "middle-out" in self.transforms

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def check_supported(self, route: Route) -> None:
        """Reject parameters the route does not support, rather than silently ignore them:
        first those of a capability it lacks (the message names the capability), then those
        its `supported_parameters` leave out."""
        if self.tools is not None and not route.capabilities.tools:
            raise InvalidRequest(
                f"The model '{route.name}' does not call tools: 'tools' needs the capability "
                "'tools'.",
                param="tools",
                code=UNSUPPORTED_PARAMETER,
            )
        if (
            self.response_format is not None
            and self.response_format.type != "text"
            and not route.capabilities.json_mode
        ):
            raise InvalidRequest(
                f"The model '{route.name}' has no JSON mode: 'response_format' of type "
                f"'{self.response_format.type}' needs the capability 'json_mode'.",
                param="response_format",
                code=UNSUPPORTED_PARAMETER,
            )
        self.reasoning_request().check_capabilities(route)
        supported = set(route.supported_parameters)
        for name in OPTIONAL_PARAMETERS:
            used = name in self.model_fields_set and getattr(self, name) is not None
            if name == "response_format" and self.response_format is not None:
                # Some clients send {"type": "text"} by default: that asks for nothing special.
                used = self.response_format.type != "text"
            if name in ("logprobs", "logit_bias"):
                used = bool(getattr(self, name))  # `false` and `{}` ask for nothing
            if used and name not in supported:
                raise InvalidRequest(
                    f"The parameter '{name}' is not supported by model '{route.name}'.",
                    param=name,
                    code=UNSUPPORTED_PARAMETER,
                )

    def reasoning_request(self, suffix: SuffixEffort | None = None) -> ReasoningRequest:
        """The reasoning the client asked for, with the effort suffix of the model name."""
        if self.max_completion_tokens is not None:
            limit: tuple[str, int] | None = ("max_completion_tokens", self.max_completion_tokens)
        elif self.max_tokens is not None:
            limit = ("max_tokens", self.max_tokens)
        else:
            limit = None
        return ReasoningRequest(self.reasoning, self.reasoning_effort, suffix, limit)

    def output_limit(self, route: Route) -> int:
        """max_tokens (or its alias), defaulted and clamped to what the route allows."""
        requested = self.max_completion_tokens or self.max_tokens
        if requested is None:
            requested = route.default_max_tokens
        return max(1, min(requested, route.max_output_tokens, route.context_length))

    def prompt_token_bound(self, media_tokens: int = 0) -> int:
        """An upper bound of the prompt's tokens: a token covers at least one byte of text;
        `media_tokens` bounds the images and audio clips (LoadedMedia.token_bound)."""
        text_bytes = sum(len(message.text.encode()) for message in self.messages)
        tool_tokens = tools_token_bound(self.tools) + sum(
            tool_turn_token_bound(message) for message in self.messages
        )
        return (
            text_bytes
            + tool_tokens
            + media_tokens
            + TEMPLATE_TOKENS_PER_MESSAGE * len(self.messages)
            + TEMPLATE_TOKENS_PER_PROMPT
        )

    def to_inference_request(
        self,
        *,
        transaction_id: str,
        account_id: str,
        route: Route,
        region: str,
        free_system_prompt: str,
        deadline_unix_ms: int,
        reasoning: inference_pb2.Reasoning | None = None,
        media: Mapping[int, Sequence[inference_pb2.MediaPart]] | None = None,
    ) -> inference_pb2.InferenceRequest:
        """`media`: the loaded media parts of each message, by message index."""
        media = media or {}
        sampling = inference_pb2.SamplingParams(
            max_tokens=self.output_limit(route), stop=self.stop_sequences
        )
        if self.temperature is not None:
            sampling.temperature = self.temperature
        if self.top_p is not None:
            sampling.top_p = self.top_p
        if self.seed is not None:
            sampling.seed = self.seed
        if self.presence_penalty is not None:
            sampling.presence_penalty = self.presence_penalty
        if self.frequency_penalty is not None:
            sampling.frequency_penalty = self.frequency_penalty
        if self.logprobs:
            sampling.logprobs = True
            sampling.top_logprobs = self.top_logprobs or 0
        for token, bias in (self.logit_bias or {}).items():
            sampling.logit_bias[int(token)] = bias
        return inference_pb2.InferenceRequest(
            transaction_id=transaction_id,
            account_id=account_id,
            route=route.name,
            region=region,
            messages=[
                inference_pb2.ChatMessage(
                    role=m.role,
                    content=m.text,
                    name=m.name or "",
                    tool_calls=[call.to_proto() for call in m.tool_calls or []],
                    tool_call_id=m.tool_call_id or "",
                    media=media.get(index, ()),
                )
                for index, m in enumerate(self.messages)
            ],
            sampling=sampling,
            free_system_prompt=free_system_prompt,
            deadline_unix_ms=deadline_unix_ms,
            response_format=(
                self.response_format.to_proto() if self.response_format is not None else None
            ),
            no_middle_out=not self.middle_out,
            tools=[tool.to_proto() for tool in self.tools or []],
            tool_choice=tool_choice_proto(self.tool_choice) if self.tools else None,
            single_tool_call=bool(self.tools) and self.parallel_tool_calls is False,
            reasoning=reasoning,
            stream=self.stream,
        )


FINISH_REASONS: dict[int, str] = {
    inference_pb2.FINISH_REASON_STOP: "stop",
    inference_pb2.FINISH_REASON_LENGTH: "length",
    inference_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    inference_pb2.FINISH_REASON_CANCELLED: "stop",
    inference_pb2.FINISH_REASON_UNSPECIFIED: "stop",
}


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    # Of completion_tokens, those of the reasoning phase (also when the reasoning is hidden).
    reasoning_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Billable prompt tokens whose computation was reused from the worker's KV cache.
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails

    @classmethod
    def from_proto(cls, usage: inference_pb2.Usage) -> CompletionUsage:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=usage.reasoning_tokens
            ),
        )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    # The token's UTF-8 bytes: a token may hold part of a character (then `token` shows U+FFFD).
    bytes: list[int] | None

    @classmethod
    def from_proto(cls, entry: inference_pb2.TopLogprob) -> TopLogprob:
        return cls(
            token=entry.token.decode("utf-8", errors="replace"),
            logprob=entry.logprob,
            bytes=list(entry.token),
        )


class ChatCompletionTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]

    @classmethod
    def from_proto(cls, entry: inference_pb2.TokenLogprob) -> ChatCompletionTokenLogprob:
        return cls(
            token=entry.token.decode("utf-8", errors="replace"),
            logprob=entry.logprob,
            bytes=list(entry.token),
            top_logprobs=[TopLogprob.from_proto(top) for top in entry.top_logprobs],
        )


class ChoiceLogprobs(BaseModel):
    """`logprobs` of a choice: every token of the answer with its log-probability under the
    model's distribution after `logit_bias`, before temperature and top-p (see the README)."""

    content: list[ChatCompletionTokenLogprob] | None

    @classmethod
    def from_proto(cls, entries: list[inference_pb2.TokenLogprob]) -> ChoiceLogprobs:
        return cls(content=[ChatCompletionTokenLogprob.from_proto(entry) for entry in entries])


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    # null when the answer is only tool calls, as OpenAI's.
    content: str | None
    # The reasoning, when the activation returns it in this field (else null).
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    # Why the worker cut the reasoning and made the model answer ("budget", "loop"); only
    # present when it did.
    thinking_rescued: str | None = None

    def to_json(self) -> str:
        """OpenAI's shape: absent fields as null, except `thinking_rescued`, left out unset."""
        unset_extras = {"thinking_rescued"} if self.thinking_rescued is None else None
        return self.model_dump_json(exclude=unset_extras)


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    # On the finish chunk, when the worker cut the reasoning (see ChatCompletion).
    thinking_rescued: str | None = None
