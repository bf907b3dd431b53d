"""The OpenAPI 3.1 description of the gateway's public API, built from the wire models in
`regio_gateway.protocol` (never written by hand), so that the document and what the handlers
validate cannot drift apart.

It serves clients (what to send, what comes back) and the e2e fuzz run (schemathesis generates
valid and invalid requests from it). `python -m regio_gateway.openapi >
services/gateway/openapi.json` regenerates the committed copy; a unit test checks that it is
current."""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

from pydantic import BaseModel, Field

from regio_common.openapi_schemas import REF_TEMPLATE, SchemaCollector, bearer_document
from regio_gateway.protocol.chat_completion import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
)
from regio_gateway.protocol.models import ModelList
from regio_gateway.protocol.text_completion import TextCompletion, TextCompletionRequest

ERROR_REF = {"$ref": REF_TEMPLATE.format(model="ErrorEnvelope")}
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(
        description="`invalid_request_error`, `authentication_error`, `insufficient_quota`, "
        "`rate_limit_error`, `server_error`, or for a usage limit what ran out: `requests`, "
        "`tokens`, `concurrency`, `spend`."
    )
    param: str | None = Field(description="The offending parameter, e.g. `messages[0].role`.")
    code: str | None


class ErrorEnvelope(BaseModel):
    """Every error, as `regio_common.errors.RegioError.envelope()` renders it."""

    error: ErrorDetail


class RouteHealth(BaseModel):
    workers: int = Field(ge=0)
    countries: list[str]


class Health(BaseModel):
    """`GET /health`: the endpoint's region and the routes with live workers in it."""

    status: Literal["ok", "unavailable"]
    region: str
    countries: list[str]
    routes: dict[str, RouteHealth]


ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, a missing or invalid parameter (`param` names it), a missing API key, "
    "a body or header over a limit, or a parameter the route does not support.",
    403: "Unknown or revoked API key (`invalid_api_key`), or credit that does not cover the "
    "request's worst case (`insufficient_budget`).",
    404: "Unknown model, not activated for the account (`model_not_found`), or activated in "
    "another region (`region_mismatch`).",
    408: "The request body did not arrive in time (`request_timeout`).",
    429: "A usage limit of the key or account (`rate_limit_exceeded`), or an edge protection "
    "such as failed-authentication throttling (`too_many_requests`); see `Retry-After`.",
    500: "Unexpected error (logged server-side; no stack trace reaches the client).",
    503: "No live worker, billing unreachable (fail closed), or no capacity; see `Retry-After`.",
    504: "The worker went silent mid-generation (its credit hold is released).",
}
CHAT_ERRORS = (400, 403, 404, 408, 429, 500, 503, 504)
MODELS_ERRORS = (400, 403, 408, 429, 500, 503)
HEALTH_ERRORS = (408, 429, 500)

TRANSACTION_HEADER = {
    "x-transaction-id": {
        "description": "The request's transaction id (also billing's idempotency key).",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    }
}
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    }
}
RATE_LIMIT_HEADERS = {
    f"x-ratelimit-{what}-{unit}": {
        "description": description.format(unit=unit),
        "required": False,
        "schema": {"type": "string"},
    }
    for unit in ("requests", "tokens")
    for what, description in (
        ("limit", "The tightest per-minute {unit} limit of the key and its account."),
        ("remaining", "What is left of it in the current minute."),
        ("reset", "Time until it resets, e.g. `250ms`, `1s`, `6m0s`."),
    )
}
COUNTRY_HEADER = {
    "x-regio-country": {
        "description": "The country of the worker that answered.",
        "required": False,
        "schema": {"type": "string"},
    }
}
CONTEXT_COMPRESSED_HEADER = {
    "x-regio-context-compressed": {
        "description": (
            "Present when the conversation did not fit the model's context: the number of "
            "messages left out of its middle (`transforms`, on by default)."
        ),
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
    }
}
THINKING_RESCUED_HEADER = {
    "x-regio-thinking-rescued": {
        "description": (
            "Present on a JSON answer whose reasoning the worker cut to make the model answer: "
            "`budget` (the reasoning reached its budget) or `loop` (it repeated itself). "
            "Streams say it in the finish chunk's `thinking_rescued`."
        ),
        "required": False,
        "schema": {"type": "string", "enum": ["budget", "loop"]},
    }
}
SSE_DESCRIPTION = (
    "Server-sent events (with `stream: true`): each `data:` line holds a "
    "`ChatCompletionChunk` (see components), an error envelope if generation fails after the "
    "first byte, and the stream ends with `data: [DONE]`."
)


SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": SSE_DESCRIPTION,
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "description": "A JSON document, or `[DONE]`."},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}


def _error_responses(statuses: tuple[int, ...]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in statuses:
        headers = dict(TRANSACTION_HEADER)
        if status in (429, 503):
            headers |= RETRY_AFTER_HEADER
        if status == 429:
            headers |= RATE_LIMIT_HEADERS
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS[status],
            "headers": headers,
            "content": {"application/json": {"schema": ERROR_REF}},
        }
    return responses


def _chat_completions(schemas: SchemaCollector) -> dict[str, Any]:
    schemas.ref(ChatCompletionChunk, "serialization")  # described by the SSE text
    return {
        "operationId": "create_chat_completion",
        "summary": "Create a chat completion",
        "description": (
            "OpenAI's chat completions. `model` is a route name (e.g. `liv`) or a "
            "provider-prefixed base model of a route; `model` or `models` (fallbacks tried in "
            "order) is required. The region is the endpoint's: the first label of the host "
            "name (`de.<domain>` serves region `de`), else the gateway's default region. "
            "`max_tokens` (alias `max_completion_tokens`) defaults to the route's default and "
            "is clamped to its maximum. A conversation too long for the model's context loses "
            "messages from its middle (system prompts, first and last turns kept; "
            "`transforms: []` answers 400 `context_length_exceeded` instead). Unknown extra "
            "fields are ignored. A model name may end in a reasoning-effort suffix (`liv:high`; "
            "`:none`, `:low`, `:medium`, `:high`, `:max`) on routes with the `thinking` "
            "capability; `reasoning.effort` beats `reasoning_effort`, which beats the suffix, "
            "which beats the activation's default. `high` and `max` need `max_tokens` of at "
            "least 4096 when it is set. Reasoning comes back in `reasoning_content`, as "
            "`<think>…</think>` at the start of `content`, or not at all, per the activation "
            "(`reasoning.exclude: true` hides it). `tools` (functions), `tool_choice` and "
            "`parallel_tool_calls` work as OpenAI's on routes with the `tools` capability; a "
            "capability the route lacks is a 400 `unsupported_parameter` naming it."
        ),
        "tags": ["inference"],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schemas.ref(ChatCompletionRequest, "validation")}
            },
        },
        "responses": _completion_responses(schemas, ChatCompletion),
    }


def _completions(schemas: SchemaCollector) -> dict[str, Any]:
    return {
        "operationId": "create_completion",
        "summary": "Create a text completion (legacy)",
        "description": (
            "OpenAI's legacy completions, for clients that still call them (LlamaIndex's "
            "`OpenAILike` by default): the prompt is sent to the route as one user message, "
            "with the route's chat template, and the answer comes back as a `text_completion` "
            "(streamed chunks have the same shape). One prompt per request; `echo`, `suffix`, "
            "`logprobs`, `best_of` > 1 and `n` > 1 are refused. Everything else — models, "
            "regions, limits, billing, errors — is as for chat completions."
        ),
        "tags": ["inference"],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schemas.ref(TextCompletionRequest, "validation")}
            },
        },
        "responses": _completion_responses(schemas, TextCompletion),
    }


def _completion_responses(schemas: SchemaCollector, answer: type[BaseModel]) -> dict[str, Any]:
    """The answers of a completions endpoint: the JSON `answer` or its SSE stream, or an error."""
    return {
        "200": {
            "description": "The completion, or its stream of chunks.",
            "headers": (
                TRANSACTION_HEADER
                | COUNTRY_HEADER
                | CONTEXT_COMPRESSED_HEADER
                | THINKING_RESCUED_HEADER
                | RATE_LIMIT_HEADERS
            ),
            "content": {
                "application/json": {"schema": schemas.ref(answer, "serialization")},
                # One server-sent event (as SSE tools, schemathesis among them, parse it).
                "text/event-stream": {"schema": SSE_EVENT},
            },
        },
        **_error_responses(CHAT_ERRORS),
    }


def _list_models(schemas: SchemaCollector) -> dict[str, Any]:
    return {
        "operationId": "list_models",
        "summary": "List the caller's models in this region",
        "description": "The caller's activated routes in the endpoint's region (the key's "
        "scope applies), with context length, output limit, capabilities, supported "
        "parameters and base models.",
        "tags": ["inference"],
        "responses": {
            "200": {
                "description": "The models.",
                "headers": TRANSACTION_HEADER,
                "content": {
                    "application/json": {"schema": schemas.ref(ModelList, "serialization")}
                },
            },
            **_error_responses(MODELS_ERRORS),
        },
    }


def _health(schemas: SchemaCollector) -> dict[str, Any]:
    health = {"application/json": {"schema": schemas.ref(Health, "serialization")}}
    return {
        "operationId": "health",
        "summary": "Availability of this endpoint",
        "description": "The region, its countries, and the routes with live workers there; "
        "503 while the gateway has no NATS connection or has not synced its configuration.",
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": {"description": "Available.", "headers": TRANSACTION_HEADER, "content": health},
            "503": {
                "description": "Not available.",
                "headers": TRANSACTION_HEADER,
                "content": health,
            },
            **_error_responses(HEALTH_ERRORS),
        },
    }


def build_document() -> dict[str, Any]:
    schemas = SchemaCollector()
    schemas.ref(ErrorEnvelope, "serialization")
    paths = {
        CHAT_COMPLETIONS_PATH: {"post": _chat_completions(schemas)},
        COMPLETIONS_PATH: {"post": _completions(schemas)},
        MODELS_PATH: {"get": _list_models(schemas)},
        HEALTH_PATH: {"get": _health(schemas)},
    }
    return bearer_document(
        title="Regio gateway API",
        description=(
            "The OpenAI-compatible inference API of Regio. Every response carries "
            "`x-transaction-id`; errors use the envelope "
            '`{"error": {"message", "type", "param", "code"}}`. Requests are served in '
            "the endpoint's region, named by the first label of its host name."
        ),
        paths=paths,
        schemas=schemas,
        bearer_description="An API key (`rg-…`) issued through the dashboard API.",
    )


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def main() -> None:
    sys.stdout.write(render(build_document()))


if __name__ == "__main__":
    main()
