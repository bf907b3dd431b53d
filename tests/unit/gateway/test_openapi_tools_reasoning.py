"""The OpenAPI document describes tools and reasoning as the request model checks them: what the
schema calls invalid, the gateway refuses with a 400 naming the parameter."""

from __future__ import annotations

from typing import Any

import pytest

from regio_common.errors import InvalidRequest
from regio_gateway.openapi import build_document
from regio_gateway.protocol.chat_completion import ChatCompletionRequest
from tests.unit.gateway.test_gateway_openapi import schema_validator

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
BODY: dict[str, Any] = {
    "model": "liv",
    "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Sun"}]},
    ],
    "tools": [WEATHER],
}


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        ({}, True),
        ({"tool_choice": "required", "parallel_tool_calls": False}, True),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, True),
        ({"reasoning_effort": "max"}, True),
        ({"reasoning": {"effort": "high", "exclude": True, "max_tokens": 100}}, True),
        ({"reasoning": {"enabled": True}}, True),
        ({"tools": []}, False),
        ({"tools": [{**WEATHER, "type": "retrieval"}]}, False),
        ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, False),
        ({"tool_choice": "sometimes"}, False),
        ({"parallel_tool_calls": "maybe"}, False),
        ({"reasoning_effort": "xhigh"}, False),
        ({"reasoning": {"effort": "extreme"}}, False),
        ({"reasoning": {"max_tokens": 0}}, False),
        ({"reasoning": "high"}, False),
    ],
)
def test_the_schema_agrees_with_the_request_model(change: dict[str, Any], valid: bool) -> None:
    body = BODY | change
    assert schema_validator(build_document(), "ChatCompletionRequest").is_valid(body) is valid
    if valid:
        ChatCompletionRequest.parse(body)
        return
    with pytest.raises(InvalidRequest) as refused:
        ChatCompletionRequest.parse(body)
    assert refused.value.param is not None
    assert refused.value.param.split(".")[0].split("[")[0] in change
