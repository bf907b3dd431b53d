"""Validation of chat completion requests: every problem is a 400 naming its parameter."""

from __future__ import annotations

import json
from typing import Any

import pytest

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Catalogue, Route
from regio_common.errors import InvalidRequest
from regio_common.settings import DEFAULT_CATALOGUE, PROJECT_ROOT
from regio_gateway.protocol.chat_completion import ChatCompletionRequest

USER = {"role": "user", "content": "Hello"}


@pytest.fixture
def liv() -> Route:
    return Catalogue.load(DEFAULT_CATALOGUE).routes["liv"]


@pytest.fixture
def production_liv() -> Route:
    path = PROJECT_ROOT / "deploy" / "k8s" / "base" / "catalogue.production.toml"
    return Catalogue.load(path).routes["liv"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ([], "body"),
        ({"model": "liv"}, "messages"),
        ({"model": "liv", "messages": "hi"}, "messages"),
        ({"model": "liv", "messages": []}, "messages"),
        ({"messages": [USER]}, "model"),
        ({"model": "liv", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "liv", "messages": [USER, {"content": "x"}]}, "messages[1].role"),
        ({"model": "liv", "messages": [USER], "max_tokens": 0}, "max_tokens"),
        ({"model": "liv", "messages": [USER], "temperature": 2.5}, "temperature"),
        ({"model": "liv", "messages": [USER], "n": 2}, "n"),
        ({"model": "liv", "messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_requests_name_the_parameter(payload: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ChatCompletionRequest.parse(payload)
    assert caught.value.param == param
    assert caught.value.status == 400
    assert caught.value.envelope()["error"]["code"] == "invalid_value"


def test_text_parts_are_joined() -> None:
    request = ChatCompletionRequest.parse(
        {
            "model": "liv",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
        }
    )
    assert request.messages[0].text == "ab"


def test_max_tokens_defaults_and_is_clamped_to_the_route(liv: Route) -> None:
    assert (
        ChatCompletionRequest.parse({"model": "liv", "messages": [USER]}).output_limit(liv) == 256
    )
    huge = ChatCompletionRequest.parse({"model": "liv", "messages": [USER], "max_tokens": 10**6})
    assert huge.output_limit(liv) == liv.max_output_tokens
    alias = ChatCompletionRequest.parse(
        {"model": "liv", "messages": [USER], "max_completion_tokens": 7}
    )
    assert alias.output_limit(liv) == 7


def test_parameters_the_route_lacks_are_refused(liv: Route, production_liv: Route) -> None:
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    request = ChatCompletionRequest.parse({"model": "liv", "messages": [USER], "tools": [tool]})
    with pytest.raises(InvalidRequest) as caught:
        request.check_supported(liv)
    assert caught.value.param == "tools"
    assert caught.value.code == "unsupported_parameter"
    request.check_supported(production_liv)  # the production route has tools


def test_json_mode_needs_the_route_but_a_text_format_asks_for_nothing(liv: Route) -> None:
    without_json = liv.model_copy(
        update={
            "supported_parameters": [p for p in liv.supported_parameters if p != "response_format"]
        }
    )

    def request(kind: str) -> ChatCompletionRequest:
        return ChatCompletionRequest.parse(
            {"model": "liv", "messages": [USER], "response_format": {"type": kind}}
        )

    request("json_object").check_supported(liv)
    request("text").check_supported(without_json)
    with pytest.raises(InvalidRequest) as caught:
        request("json_object").check_supported(without_json)
    assert caught.value.param == "response_format"


def test_a_json_schema_travels_to_the_worker_as_json_text(liv: Route) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = ChatCompletionRequest.parse(
        {
            "model": "liv",
            "messages": [USER],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": schema},
            },
        }
    )
    proto = request.to_inference_request(
        transaction_id="t",
        account_id="a",
        route=liv,
        region="eu",
        free_system_prompt="",
        deadline_unix_ms=0,
    )
    assert proto.response_format.kind == inference_pb2.ResponseFormat.KIND_JSON_SCHEMA
    assert json.loads(proto.response_format.json_schema) == schema


def test_prompt_token_bound_covers_every_byte() -> None:
    request = ChatCompletionRequest.parse(
        {"model": "liv", "messages": [{"role": "user", "content": "héllo"}, USER]}
    )
    assert request.prompt_token_bound() >= len("héllo".encode()) + len("Hello")


def test_conversion_to_the_worker_request(liv: Route) -> None:
    request = ChatCompletionRequest.parse(
        {"model": "liv", "messages": [USER], "temperature": 0.5, "stop": "END", "seed": 3}
    )
    proto = request.to_inference_request(
        transaction_id="txn-1",
        account_id="acct_1",
        route=liv,
        region="eu",
        free_system_prompt="Be brief.",
        deadline_unix_ms=1,
    )
    assert proto.sampling.temperature == pytest.approx(0.5)
    assert list(proto.sampling.stop) == ["END"]
    assert proto.sampling.seed == 3
    assert not proto.sampling.HasField("top_p")
    assert proto.free_system_prompt == "Be brief."
    assert [(m.role, m.content) for m in proto.messages] == [("user", "Hello")]


def test_candidate_models_are_model_then_fallbacks_each_once() -> None:
    request = ChatCompletionRequest.parse(
        {"model": "a", "models": ["b", "a", "c"], "messages": [USER]}
    )
    assert request.candidate_models == ["a", "b", "c"]
    only_fallbacks = ChatCompletionRequest.parse({"models": ["b"], "messages": [USER]})
    assert only_fallbacks.candidate_models == ["b"]


@pytest.mark.parametrize(
    ("transforms", "no_middle_out"),
    [(None, False), (["middle-out"], False), ([], True)],
)
def test_transforms_turn_middle_out_on_by_default_and_off_with_an_empty_list(
    liv: Route, transforms: list[str] | None, no_middle_out: bool
) -> None:
    payload: dict[str, Any] = {"model": "liv", "messages": [USER]}
    if transforms is not None:
        payload["transforms"] = transforms
    proto = ChatCompletionRequest.parse(payload).to_inference_request(
        transaction_id="t",
        account_id="a",
        route=liv,
        region="eu",
        free_system_prompt="",
        deadline_unix_ms=0,
    )
    assert proto.no_middle_out is no_middle_out


def test_an_unknown_transform_is_a_400_naming_transforms() -> None:
    with pytest.raises(InvalidRequest) as caught:
        ChatCompletionRequest.parse({"model": "liv", "messages": [USER], "transforms": ["x"]})
    assert caught.value.param is not None and caught.value.param.startswith("transforms")
