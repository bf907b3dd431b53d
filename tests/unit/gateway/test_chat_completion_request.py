"""Validation of chat completion requests: every problem is a 400 naming its parameter."""

from __future__ import annotations

import json
from typing import Any

import pytest

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Catalogue, Route
from regio_common.errors import InvalidRequest
from regio_common.settings import DEFAULT_CATALOGUE
from regio_gateway.protocol.chat_completion import ChatCompletionRequest, ChoiceLogprobs

USER = {"role": "user", "content": "Hello"}


@pytest.fixture
def liv() -> Route:
    return Catalogue.load(DEFAULT_CATALOGUE).routes["liv"]


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
        ({"model": "liv", "messages": [USER], "logprobs": "maybe"}, "logprobs"),
        (
            {"model": "liv", "messages": [USER], "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
        ),
        (
            {"model": "liv", "messages": [USER], "logprobs": True, "top_logprobs": -1},
            "top_logprobs",
        ),
        # top_logprobs requires logprobs: true.
        ({"model": "liv", "messages": [USER], "top_logprobs": 2}, "top_logprobs"),
        (
            {"model": "liv", "messages": [USER], "logprobs": False, "top_logprobs": 0},
            "top_logprobs",
        ),
        ({"model": "liv", "messages": [USER], "logit_bias": [1, 2]}, "logit_bias"),
        ({"model": "liv", "messages": [USER], "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"model": "liv", "messages": [USER], "logit_bias": {"-1": 1}}, "logit_bias"),
        ({"model": "liv", "messages": [USER], "logit_bias": {"007": 1}}, "logit_bias"),
        ({"model": "liv", "messages": [USER], "logit_bias": {"12": 100.5}}, "logit_bias"),
        ({"model": "liv", "messages": [USER], "logit_bias": {"12": -101}}, "logit_bias"),
        ({"model": "liv", "messages": [USER], "logit_bias": {"12": "up"}}, "logit_bias"),
        ({"model": "liv", "messages": [USER], "logit_bias": {"1234567890": 1}}, "logit_bias"),
        (
            {
                "model": "liv",
                "messages": [USER],
                "logit_bias": {str(token): 1 for token in range(301)},
            },
            "logit_bias",
        ),
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


def test_parameters_the_route_lacks_are_refused(liv: Route) -> None:
    without = liv.model_copy(
        update={"supported_parameters": [p for p in liv.supported_parameters if p != "logprobs"]}
    )
    request = ChatCompletionRequest.parse({"model": "liv", "messages": [USER], "logprobs": True})
    request.check_supported(liv)  # the dev route lists logprobs
    with pytest.raises(InvalidRequest) as caught:
        request.check_supported(without)
    assert caught.value.param == "logprobs"
    assert caught.value.code == "unsupported_parameter"
    ChatCompletionRequest.parse({"model": "liv", "messages": [USER]}).check_supported(without)


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
    # The capability, too: a route that lists the parameter but has no JSON mode.
    no_capability = liv.model_copy(
        update={"capabilities": liv.capabilities.model_copy(update={"json_mode": False})}
    )
    request("text").check_supported(no_capability)
    with pytest.raises(InvalidRequest) as caught:
        request("json_object").check_supported(no_capability)
    assert caught.value.param == "response_format"
    assert caught.value.code == "unsupported_parameter"
    assert "json_mode" in caught.value.message


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


def test_logprobs_and_logit_bias_travel_to_the_worker(liv: Route) -> None:
    def proto(**fields: Any) -> inference_pb2.SamplingParams:
        request = ChatCompletionRequest.parse({"model": "liv", "messages": [USER], **fields})
        request.check_supported(liv)  # the dev route advertises all three
        return request.to_inference_request(
            transaction_id="t",
            account_id="a",
            route=liv,
            region="eu",
            free_system_prompt="",
            deadline_unix_ms=0,
        ).sampling

    plain = proto()
    assert not plain.logprobs and plain.top_logprobs == 0 and not plain.logit_bias
    assert proto(logprobs=False).logprobs is False
    with_top = proto(logprobs=True, top_logprobs=20)
    assert with_top.logprobs and with_top.top_logprobs == 20
    assert proto(logprobs=True).top_logprobs == 0
    biased = proto(logit_bias={"0": -100, "262143": 100, "17": 2.5})
    assert dict(biased.logit_bias) == {0: -100.0, 262143: 100.0, 17: 2.5}
    assert len(proto(logit_bias={str(token): 1 for token in range(300)}).logit_bias) == 300
    for name in ("logprobs", "top_logprobs", "logit_bias"):
        assert name in liv.supported_parameters


def test_logprobs_and_logit_bias_need_the_route_unless_they_ask_for_nothing(liv: Route) -> None:
    bare = liv.model_copy(
        update={
            "supported_parameters": [
                p
                for p in liv.supported_parameters
                if p not in ("logprobs", "top_logprobs", "logit_bias")
            ]
        }
    )

    def request(**fields: Any) -> ChatCompletionRequest:
        return ChatCompletionRequest.parse({"model": "liv", "messages": [USER], **fields})

    # `false` and `{}` ask for nothing: clients that send them by default keep working.
    request(logprobs=False).check_supported(bare)
    request(logit_bias={}).check_supported(bare)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 3}, "logprobs"),
        ({"logit_bias": {"5": 1}}, "logit_bias"),
    ]
    for fields, param in cases:
        with pytest.raises(InvalidRequest) as caught:
            request(**fields).check_supported(bare)
        assert caught.value.param == param
        assert caught.value.code == "unsupported_parameter"


def test_token_logprobs_render_as_openai_does() -> None:
    euro = "€".encode()
    entries = [
        inference_pb2.TokenLogprob(
            token=b" Hi",
            logprob=-0.25,
            top_logprobs=[
                inference_pb2.TopLogprob(token=b" Hi", logprob=-0.25),
                inference_pb2.TopLogprob(token=b" Hello", logprob=-1.5),
            ],
        ),
        # A token with part of a character: `bytes` is exact, `token` shows U+FFFD.
        inference_pb2.TokenLogprob(token=euro[:2], logprob=-3.0),
    ]
    rendered = ChoiceLogprobs.from_proto(entries).model_dump()
    assert rendered == {
        "content": [
            {
                "token": " Hi",
                "logprob": -0.25,
                "bytes": list(b" Hi"),
                "top_logprobs": [
                    {"token": " Hi", "logprob": -0.25, "bytes": list(b" Hi")},
                    {"token": " Hello", "logprob": -1.5, "bytes": list(b" Hello")},
                ],
            },
            {"token": "\ufffd", "logprob": -3.0, "bytes": list(euro[:2]), "top_logprobs": []},
        ]
    }
