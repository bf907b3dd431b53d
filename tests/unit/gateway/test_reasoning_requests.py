"""Reasoning in chat completion requests: the efforts, their precedence (`reasoning.effort` >
`reasoning_effort` > model suffix > the activation's default), the 4096 rule for deep efforts,
the budgets, and the routes that cannot reason or take a budget."""

from __future__ import annotations

from typing import Any

import pytest

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Catalogue, Route
from regio_common.config_records import ThinkingSettings
from regio_common.errors import InvalidRequest
from regio_common.settings import DEFAULT_CATALOGUE
from regio_gateway.handlers.routing import route_and_suffix
from regio_gateway.protocol.chat_completion import ChatCompletionRequest
from regio_gateway.protocol.reasoning import ReasoningPlan, SuffixEffort
from tests.unit.gateway.fake_gateway import thinking_catalogue

OFF = inference_pb2.Reasoning.EFFORT_OFF
MEDIUM = inference_pb2.Reasoning.EFFORT_MEDIUM
HIGH = inference_pb2.Reasoning.EFFORT_HIGH
MAX = inference_pb2.Reasoning.EFFORT_MAX
DEFAULT = ThinkingSettings()  # medium, reasoning_content


@pytest.fixture
def thinker() -> Route:
    """A route that reasons and takes budgets; outputs up to 8192 tokens."""
    return thinking_catalogue().routes["liv"]


@pytest.fixture
def plain() -> Route:
    """The dev route: no reasoning."""
    return Catalogue.load(DEFAULT_CATALOGUE).routes["liv"]


def parse(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.parse(
        {"model": "liv", "messages": [{"role": "user", "content": "Why?"}], **extra}
    )


def plan(
    route: Route,
    suffix: SuffixEffort | None = None,
    thinking: ThinkingSettings = DEFAULT,
    **extra: Any,
) -> ReasoningPlan:
    request = parse(**extra)
    request.check_supported(route)
    return request.reasoning_request(suffix).plan(route, thinking, request.output_limit(route))


def refused(route: Route, suffix: SuffixEffort | None = None, **extra: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        plan(route, suffix, **extra)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("extra", "effort"),
    [
        ({"reasoning_effort": "none"}, OFF),
        ({"reasoning_effort": "minimal"}, OFF),
        ({"reasoning_effort": "low"}, OFF),
        ({"reasoning_effort": "medium"}, MEDIUM),
        ({"reasoning_effort": "high"}, HIGH),
        ({"reasoning_effort": "max"}, MAX),
        ({"reasoning": {"effort": "high"}}, HIGH),
        ({"reasoning": {"effort": "low"}}, OFF),
        ({"reasoning": {"enabled": True}}, MEDIUM),
        ({"reasoning": {"enabled": False}}, OFF),
        ({"reasoning": {"exclude": True}}, MEDIUM),  # the default effort, hidden
    ],
)
def test_efforts(thinker: Route, extra: dict[str, Any], effort: int) -> None:
    assert plan(thinker, **extra).effort == effort


@pytest.mark.parametrize(
    ("suffix", "extra", "effort"),
    [
        # The reasoning object beats reasoning_effort, which beats the suffix.
        ("max", {"reasoning": {"effort": "none"}, "reasoning_effort": "high"}, OFF),
        ("none", {"reasoning": {"effort": "high"}, "reasoning_effort": "none"}, HIGH),
        ("max", {"reasoning_effort": "medium"}, MEDIUM),
        ("none", {"reasoning_effort": "high"}, HIGH),
        ("high", {}, HIGH),
        ("low", {}, OFF),
        ("max", {"reasoning": {"exclude": True}}, MAX),
        # `enabled: true` keeps an effort asked elsewhere, or turns reasoning on at medium.
        ("high", {"reasoning": {"enabled": True}}, HIGH),
        ("none", {"reasoning": {"enabled": True}}, MEDIUM),
        ("high", {"reasoning": {"enabled": False}}, OFF),
    ],
)
def test_precedence(
    thinker: Route, suffix: SuffixEffort, extra: dict[str, Any], effort: int
) -> None:
    assert plan(thinker, suffix, **extra).effort == effort


@pytest.mark.parametrize(
    ("default", "effort"),
    [("none", OFF), ("low", OFF), ("medium", MEDIUM), ("high", HIGH)],
)
def test_without_reasoning_parameters_the_activation_default_applies(
    thinker: Route, default: Any, effort: int
) -> None:
    settings = ThinkingSettings(default_effort=default)
    assert plan(thinker, thinking=settings).effort == effort
    # A default deep effort is the operator's choice: a small max_tokens is not refused.
    assert plan(thinker, thinking=settings, max_tokens=100).effort == effort


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize(
    ("suffix", "extra"),
    [
        (None, {"reasoning_effort": "high"}),
        (None, {"reasoning": {"effort": "max"}}),
        ("high", {}),
        ("max", {}),
    ],
)
def test_deep_efforts_need_4096_output_tokens_when_a_limit_is_set(
    thinker: Route, name: str, suffix: SuffixEffort | None, extra: dict[str, Any]
) -> None:
    too_small: dict[str, Any] = {**extra, name: 4095}
    error = refused(thinker, suffix, **too_small)
    assert error.param == "max_tokens" and error.code == "invalid_value"
    assert "4096" in error.message and f"'{name}'" in error.message
    enough: dict[str, Any] = {**extra, name: 4096}
    assert plan(thinker, suffix, **enough).effort in (HIGH, MAX)
    assert plan(thinker, suffix, **extra).effort in (HIGH, MAX)  # unset: fine
    # Medium has no such rule.
    medium: dict[str, Any] = {"reasoning_effort": "medium", name: 16}
    assert plan(thinker, **medium).effort == MEDIUM


@pytest.mark.parametrize(
    ("extra", "budget"),
    [
        ({"reasoning_effort": "medium", "max_tokens": 1000}, 500),
        ({"reasoning_effort": "high", "max_tokens": 8000}, 6000),
        ({"reasoning_effort": "max", "max_tokens": 8000}, 7200),
        ({"reasoning_effort": "none", "max_tokens": 8000}, 0),
        # The route's default_max_tokens (256) when max_tokens is unset.
        ({"reasoning_effort": "medium"}, 128),
        # The client's budget, capped at 90 % of the output limit so that the answer has room.
        ({"reasoning": {"max_tokens": 300}, "max_tokens": 1000}, 300),
        ({"reasoning": {"max_tokens": 5000}, "max_tokens": 1000}, 900),
        ({"reasoning": {"effort": "high", "max_tokens": 300}, "max_tokens": 5000}, 300),
    ],
)
def test_budgets(thinker: Route, extra: dict[str, Any], budget: int) -> None:
    assert plan(thinker, **extra).budget_tokens == budget
    assert plan(thinker, **extra).to_proto().budget_tokens == budget


def test_a_budget_turns_reasoning_on_but_not_against_an_explicit_off(thinker: Route) -> None:
    off_by_default = ThinkingSettings(default_effort="none")
    assert plan(thinker, thinking=off_by_default, reasoning={"max_tokens": 64}).effort == MEDIUM
    for explicit_off in (
        {"reasoning": {"max_tokens": 64}, "reasoning_effort": "none"},
        {"reasoning": {"max_tokens": 64, "effort": "low"}},
        {"reasoning": {"max_tokens": 64, "enabled": False}},
    ):
        assert refused(thinker, **explicit_off).param == "reasoning.max_tokens"
    assert refused(thinker, "none", reasoning={"max_tokens": 64}).param == "reasoning.max_tokens"


@pytest.mark.parametrize(
    ("suffix", "extra", "param"),
    [
        (None, {"reasoning_effort": "high"}, "reasoning_effort"),
        (None, {"reasoning_effort": "none"}, "reasoning_effort"),
        (None, {"reasoning": {"effort": "medium"}}, "reasoning"),
        (None, {"reasoning": {"exclude": True}}, "reasoning"),
        ("high", {}, "model"),
        ("none", {}, "model"),
    ],
)
def test_a_route_without_thinking_refuses_reasoning_naming_the_capability(
    plain: Route, suffix: SuffixEffort | None, extra: dict[str, Any], param: str
) -> None:
    error = refused(plain, suffix, **extra)
    assert error.param == param and error.code == "unsupported_parameter"
    assert "capability 'thinking'" in error.message


def test_a_route_without_thinking_never_reasons(plain: Route) -> None:
    assert plan(plain, thinking=ThinkingSettings(default_effort="high")).effort == OFF
    assert plan(plain).budget_tokens == 0


def test_a_budget_needs_the_token_budget_capability() -> None:
    no_budget = thinking_catalogue(token_budget=False).routes["liv"]
    error = refused(no_budget, reasoning={"effort": "high", "max_tokens": 100})
    assert error.param == "reasoning.max_tokens" and error.code == "unsupported_parameter"
    assert "capability 'token_budget'" in error.message
    assert plan(no_budget, reasoning={"effort": "high"}).effort == HIGH


def test_a_thinking_route_that_does_not_list_reasoning_effort_refuses_it(thinker: Route) -> None:
    unlisted = thinker.model_copy(
        update={
            "supported_parameters": [
                p for p in thinker.supported_parameters if p != "reasoning_effort"
            ]
        }
    )
    assert refused(unlisted, reasoning_effort="high").param == "reasoning_effort"
    assert plan(unlisted, "high").effort == HIGH  # the suffix is not a parameter


@pytest.mark.parametrize(
    ("output", "extra", "shown"),
    [
        ("reasoning_content", {}, "reasoning_content"),
        ("think_tags", {}, "think_tags"),
        ("hidden", {}, "hidden"),
        ("reasoning_content", {"reasoning": {"exclude": True}}, "hidden"),
        ("think_tags", {"reasoning": {"exclude": True}}, "hidden"),
        ("think_tags", {"reasoning": {"exclude": False}}, "think_tags"),
    ],
)
def test_how_the_answer_shows_reasoning(
    thinker: Route, output: Any, extra: dict[str, Any], shown: str
) -> None:
    assert (
        plan(thinker, thinking=ThinkingSettings(reasoning_output=output), **extra).output == shown
    )


@pytest.mark.parametrize("name", ["reasoning_effort", "reasoning.effort"])
@pytest.mark.parametrize("value", ["xhigh", "HIGH", "", 3])
def test_unknown_efforts_are_400s(name: str, value: Any) -> None:
    extra = {"reasoning": {"effort": value}} if "." in name else {"reasoning_effort": value}
    with pytest.raises(InvalidRequest) as caught:
        parse(**extra)
    assert caught.value.param == name


def test_a_budget_below_one_token_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(reasoning={"max_tokens": 0})
    assert caught.value.param == "reasoning.max_tokens"


@pytest.mark.parametrize(
    ("model", "route", "suffix"),
    [
        ("liv", "liv", None),
        ("liv:high", "liv", "high"),
        ("liv:max", "liv", "max"),
        ("liv:low", "liv", "low"),
        ("liv:medium", "liv", "medium"),
        ("liv:none", "liv", "none"),
        ("google/gemma-3-270m:high", "liv", "high"),
        ("liv:ultra", None, None),
        ("liv:HIGH", None, None),
        (":high", None, None),
        ("nikola:high", None, "high"),
    ],
)
def test_the_model_suffix(model: str, route: str | None, suffix: str | None) -> None:
    found, effort = route_and_suffix(Catalogue.load(DEFAULT_CATALOGUE), model)
    assert (found.name if found else None, effort) == (route, suffix)


def test_a_name_that_is_a_route_keeps_its_colon() -> None:
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    liv = catalogue.routes["liv"]
    aliased = liv.model_copy(update={"base_models": ["vendor/model:high"]})
    catalogue = catalogue.model_copy(update={"routes": {"liv": aliased}})
    found, effort = route_and_suffix(catalogue, "vendor/model:high")
    assert found is not None and found.name == "liv" and effort is None
