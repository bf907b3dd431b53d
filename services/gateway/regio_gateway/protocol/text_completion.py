"""`POST /v1/completions`: OpenAI's legacy text completions, served as a one-message chat.

Clients still call it by default (LlamaIndex's `OpenAILike.complete`, older SDK code). Regio's
workers only serve chat, as LiteLLM does for chat models: the prompt becomes one user message,
the route's chat template applies, and the answer comes back in the `text_completion` shape.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from regio_common.errors import InvalidRequest
from regio_common.validation import parse_body
from regio_gateway.protocol.chat_completion import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionUsage,
    LogitBiasMap,
    StreamOptions,
)

# Chat parameters a text completion passes on unchanged (same names, same meaning).
SHARED_PARAMETERS = (
    "model",
    "models",
    "max_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "transforms",
)
CHAT_ID_PREFIX = "chatcmpl-"
TEXT_ID_PREFIX = "cmpl-"


class TextCompletionRequest(BaseModel):
    # Unknown fields are ignored, as on /v1/chat/completions.
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, min_length=1)
    models: list[str] | None = Field(None, min_length=1, max_length=8)
    # One prompt: a string, or a list holding one string (batches of prompts are not served).
    prompt: str | list[str] = Field(
        description="The text to complete; sent to the model as one user message."
    )
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: LogitBiasMap | None = None
    user: str | None = None
    transforms: list[Literal["middle-out"]] | None = None
    n: int = Field(1, ge=1, le=1)
    best_of: int = Field(1, ge=1, le=1)
    # The prompt is not echoed, no text follows the insertion point, and per-token
    # log-probabilities are a chat feature here: asking for them is a 400 naming them.
    echo: Literal[False] = False
    suffix: None = None
    logprobs: None = None

    @classmethod
    def parse(cls, payload: object) -> ChatCompletionRequest:
        """Validate a decoded JSON body and turn it into the equivalent chat request; any
        problem becomes a 400 naming the parameter."""
        request = parse_body(cls, payload)
        return ChatCompletionRequest.parse(request.to_chat_payload())

    def to_chat_payload(self) -> dict[str, Any]:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise InvalidRequest(
                "Invalid value for 'prompt': one prompt per request (a string, or a list "
                "holding one string).",
                param="prompt",
            )
        text = self.prompt[0] if isinstance(self.prompt, list) else self.prompt
        payload = self.model_dump(include=set(SHARED_PARAMETERS), exclude_none=True)
        payload["messages"] = [{"role": "user", "content": text}]
        return payload


class TextChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: str | None


class TextCompletion(BaseModel):
    """A text completion, or (streamed) one of its chunks: OpenAI uses one shape for both."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    # Regio's own (see ChatCompletion): why the reasoning was cut, when it was.
    thinking_rescued: str | None = None

    @classmethod
    def from_chat(cls, completion: ChatCompletion) -> TextCompletion:
        choice = completion.choices[0]
        return cls(
            id=_text_id(completion.id),
            created=completion.created,
            model=completion.model,
            choices=[
                TextChoice(text=choice.message.content or "", finish_reason=choice.finish_reason)
            ],
            usage=completion.usage,
            thinking_rescued=completion.thinking_rescued,
        )

    @classmethod
    def from_chat_chunk(cls, chunk: ChatCompletionChunk) -> TextCompletion | None:
        """The text chunk of a chat chunk; None for one that carries no text, end or usage
        (the role chunk, reasoning deltas)."""
        choices = [
            TextChoice(text=choice.delta.content or "", finish_reason=choice.finish_reason)
            for choice in chunk.choices
            if choice.delta.content or choice.finish_reason is not None
        ]
        if not choices and chunk.usage is None:
            return None
        return cls(
            id=_text_id(chunk.id),
            created=chunk.created,
            model=chunk.model,
            choices=choices,
            usage=chunk.usage,
            thinking_rescued=chunk.thinking_rescued,
        )

    def to_json(self) -> str:
        """OpenAI's shape: absent fields as null, except Regio's `thinking_rescued` and a
        chunk's `usage`, left out unset."""
        unset = {"thinking_rescued"} if self.thinking_rescued is None else set()
        return self.model_dump_json(exclude=unset)


def _text_id(chat_id: str) -> str:
    return TEXT_ID_PREFIX + chat_id.removeprefix(CHAT_ID_PREFIX)
