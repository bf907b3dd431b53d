"""The gateway's OpenAPI document: generated from the wire models, committed, and in agreement
with what the handlers accept and the error middleware renders."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from schemathesis.core.result import Ok

from regio_common import errors
from regio_common.settings import PROJECT_ROOT
from regio_gateway.openapi import ErrorEnvelope, build_document, render
from regio_gateway.protocol.chat_completion import ChatCompletionRequest

COMMITTED = PROJECT_ROOT / "services" / "gateway" / "openapi.json"
# The seed's error table, the usage limits and the edge protections.
GATEWAY_ERRORS: list[errors.RegioError] = [
    errors.InvalidRequest("bad", param="messages"),
    errors.RequestTooLarge("too big", param="body"),
    errors.AuthenticationFailed("Incorrect API key provided."),
    errors.InsufficientBudget("no credit"),
    errors.ModelNotFound("no such model", param="model"),
    errors.RegionMismatch("elsewhere", param="model"),
    errors.RateLimited("slow down", limit_type="tokens", retry_after_seconds=3),
    errors.TooManyRequests("slow down", retry_after_seconds=60),
    errors.ServerError("oops"),
    errors.ServiceUnavailable("no worker", retry_after_seconds=5),
    errors.UpstreamTimeout("silent worker"),
]
VALID_BODY: dict[str, Any] = {
    "model": "liv",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    ],
    "max_tokens": 4,
    "temperature": 0,
    "stop": ["\n"],
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
}


def document() -> dict[str, Any]:
    return build_document()


def schema_validator(doc: dict[str, Any], name: str) -> jsonschema_rs.Draft202012Validator:
    """A validator of one component schema, resolving references within the document."""
    root = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema_rs.Draft202012Validator(root)


def test_the_committed_document_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == render(document()), (
        "services/gateway/openapi.json is stale: regenerate it with "
        "`python -m regio_gateway.openapi > services/gateway/openapi.json`"
    )


def test_it_is_openapi_3_1_and_schemathesis_reads_every_operation() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    operations = [
        result.ok().label
        for result in schemathesis.openapi.from_dict(doc).get_all_operations()
        if isinstance(result, Ok)
    ]
    assert sorted(operations) == [
        "GET /health",
        "GET /v1/models",
        "POST /v1/chat/completions",
        "POST /v1/completions",
    ]
    text = json.dumps(doc)
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in doc["components"]["schemas"], name


def test_every_response_names_the_transaction_header_and_errors_use_the_envelope() -> None:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                assert response["headers"]["x-transaction-id"]["required"], (path, status)
                if int(status) >= 400 and not (path == "/health" and status == "503"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (
                        method,
                        path,
                        status,
                    )
            if method != "get" or path != "/health":
                assert {"400", "403", "429", "500", "503"} <= set(operation["responses"]), path


@pytest.mark.parametrize("error", GATEWAY_ERRORS, ids=lambda error: type(error).__name__)
def test_each_gateway_error_is_described_as_rendered(error: errors.RegioError) -> None:
    doc = document()
    responses = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert str(error.status) in responses
    schema_validator(doc, "ErrorEnvelope").validate(error.envelope())
    ErrorEnvelope.model_validate(error.envelope())
    if error.retry_after_seconds is not None:
        assert "Retry-After" in responses[str(error.status)]["headers"]


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        ({}, True),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
        ({"temperature": 2.5}, False),
        ({"max_tokens": 0}, False),
        ({"n": 2}, False),
        ({"top_p": 0}, False),
        ({"seed": 2**63}, False),
        ({"seed": -(2**63)}, True),
        ({"messages": []}, False),
        ({"messages": [{"role": "robot", "content": "x"}]}, False),
        ({"messages": [{"role": "user", "content": [{"type": "image", "text": "x"}]}]}, False),
        ({"response_format": {"type": "xml"}}, False),
        ({"models": []}, False),
        ({"logprobs": True, "top_logprobs": 20, "logit_bias": {"0": -100, "9": 100}}, True),
        ({"logprobs": True, "top_logprobs": 21}, False),
        ({"logit_bias": {"abc": 1}}, False),
        ({"logit_bias": {"1": 101}}, False),
        ({"logit_bias": {str(token): 0 for token in range(301)}}, False),
    ],
)
def test_the_request_schema_agrees_with_the_request_model(
    change: dict[str, Any], valid: bool
) -> None:
    """What the document calls invalid, the handler refuses with a 400 naming the parameter."""
    body = VALID_BODY | change
    described_valid = schema_validator(document(), "ChatCompletionRequest").is_valid(body)
    assert described_valid is valid
    if valid:
        ChatCompletionRequest.parse(body)
        return
    with pytest.raises(errors.InvalidRequest) as refused:
        ChatCompletionRequest.parse(body)
    assert refused.value.param is not None and refused.value.param.split(".")[0].split("[")[0] in {
        *change,
        "body",
    }
