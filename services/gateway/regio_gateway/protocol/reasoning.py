"""Reasoning effort: what a client asks (`reasoning_effort`, OpenRouter's `reasoning` object, a
`:high` model suffix), checked against the route and resolved with the activation's default into
what the worker is told (effort and reasoning budget) and how the answer shows the reasoning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Route
from regio_common.config_records import ReasoningOutput, ThinkingSettings
from regio_common.errors import InvalidRequest

Effort = Literal["none", "minimal", "low", "medium", "high", "max"]
SuffixEffort = Literal["none", "low", "medium", "high", "max"]
SUFFIX_EFFORTS: tuple[SuffixEffort, ...] = get_args(SuffixEffort)
# The seed: "none" and "low" mean no reasoning; "minimal" is OpenAI's name for the least.
OFF = inference_pb2.Reasoning.EFFORT_OFF
EFFORTS: dict[str, inference_pb2.Reasoning.Effort.ValueType] = {
    "none": inference_pb2.Reasoning.EFFORT_OFF,
    "minimal": inference_pb2.Reasoning.EFFORT_OFF,
    "low": inference_pb2.Reasoning.EFFORT_OFF,
    "medium": inference_pb2.Reasoning.EFFORT_MEDIUM,
    "high": inference_pb2.Reasoning.EFFORT_HIGH,
    "max": inference_pb2.Reasoning.EFFORT_MAX,
}
# Deep efforts need room: a client's max_tokens below this is refused (the seed's rule).
DEEP_EFFORT_MIN_MAX_TOKENS = 4096
DEEP_EFFORTS = (inference_pb2.Reasoning.EFFORT_HIGH, inference_pb2.Reasoning.EFFORT_MAX)
# Share of the output limit the reasoning may take before the worker makes the model answer
# (thinking rescue), when the client sets no budget; the rest is room for the answer.
BUDGET_PERCENT: dict[inference_pb2.Reasoning.Effort.ValueType, int] = {
    inference_pb2.Reasoning.EFFORT_MEDIUM: 50,
    inference_pb2.Reasoning.EFFORT_HIGH: 75,
    inference_pb2.Reasoning.EFFORT_MAX: 90,
}
# A client's budget is capped at the largest default share, so that the answer has room.
MAX_BUDGET_PERCENT = 90
UNSUPPORTED_PARAMETER = "unsupported_parameter"


class ReasoningOptions(BaseModel):
    """OpenRouter's `reasoning` object."""

    model_config = ConfigDict(extra="ignore")

    effort: Effort | None = None
    # Reason, but leave the reasoning out of the answer.
    exclude: bool = False
    # The reasoning budget in tokens (routes with the `token_budget` capability).
    max_tokens: int | None = Field(None, ge=1)
    # true: reason (at medium effort unless an effort is given); false: do not reason.
    enabled: bool | None = None


@dataclass(frozen=True)
class ReasoningPlan:
    """What the worker is told, and how the answer shows the reasoning."""

    effort: inference_pb2.Reasoning.Effort.ValueType
    budget_tokens: int
    output: ReasoningOutput

    def to_proto(self) -> inference_pb2.Reasoning:
        return inference_pb2.Reasoning(effort=self.effort, budget_tokens=self.budget_tokens)


NO_REASONING = ReasoningPlan(inference_pb2.Reasoning.EFFORT_OFF, 0, "reasoning_content")


@dataclass(frozen=True)
class ReasoningRequest:
    """The client's reasoning parameters: the `reasoning` object, `reasoning_effort`, the model
    name's suffix, and the output limit it set (`max_tokens` or `max_completion_tokens`)."""

    options: ReasoningOptions | None
    reasoning_effort: Effort | None
    suffix: SuffixEffort | None
    max_tokens_param: tuple[str, int] | None

    def plan(self, route: Route, thinking: ThinkingSettings, output_limit: int) -> ReasoningPlan:
        """Refuse what the route cannot do; else the effort by precedence: the `reasoning`
        object, `reasoning_effort`, the suffix, the activation's default."""
        self.check_capabilities(route)
        if not route.capabilities.thinking:
            return NO_REASONING
        asked = self._asked_effort()
        effort = EFFORTS[asked if asked is not None else thinking.default_effort]
        if asked is not None:
            self._check_room(asked, effort)
        excluded = self.options is not None and self.options.exclude
        output: ReasoningOutput = "hidden" if excluded else thinking.reasoning_output
        return ReasoningPlan(effort, self._budget(effort, output_limit), output)

    def check_capabilities(self, route: Route) -> None:
        """Reasoning parameters need a route that reasons; a budget one that takes it."""
        param = self._first_param_used()
        if param is not None and not route.capabilities.thinking:
            raise InvalidRequest(
                f"The model '{route.name}' does not reason: '{param}' needs the capability "
                "'thinking'.",
                param=param,
                code=UNSUPPORTED_PARAMETER,
            )
        if self._budget_asked() is not None and not route.capabilities.token_budget:
            raise InvalidRequest(
                f"The model '{route.name}' takes no reasoning budget: 'reasoning.max_tokens' "
                "needs the capability 'token_budget'.",
                param="reasoning.max_tokens",
                code=UNSUPPORTED_PARAMETER,
            )

    def _first_param_used(self) -> str | None:
        if self.options is not None:
            return "reasoning"
        if self.reasoning_effort is not None:
            return "reasoning_effort"
        return "model" if self.suffix is not None else None

    def _budget_asked(self) -> int | None:
        return self.options.max_tokens if self.options is not None else None

    def _asked_effort(self) -> Effort | None:
        options = self.options or ReasoningOptions()
        if options.effort is not None:
            asked: Effort | None = options.effort
        elif options.enabled is False:
            asked = "none"
        else:
            asked = self.reasoning_effort or self.suffix
            # `enabled: true` turns reasoning on (at medium unless an effort that reasons was
            # asked elsewhere); so does a budget when no effort was asked at all.
            enabled = options.enabled and (asked is None or EFFORTS[asked] == OFF)
            if enabled or (asked is None and options.max_tokens is not None):
                asked = "medium"
        if options.max_tokens is not None and asked is not None and EFFORTS[asked] == OFF:
            raise InvalidRequest(
                "Invalid value for 'reasoning.max_tokens': a reasoning budget needs reasoning, "
                f"and the effort asked is '{asked}'.",
                param="reasoning.max_tokens",
            )
        return asked

    def _check_room(self, asked: Effort, effort: inference_pb2.Reasoning.Effort.ValueType) -> None:
        if effort not in DEEP_EFFORTS or self.max_tokens_param is None:
            return
        name, value = self.max_tokens_param
        if value < DEEP_EFFORT_MIN_MAX_TOKENS:
            # `param` is max_tokens for either spelling (the agreed contract; one is the
            # other's alias); the message names the one the client sent.
            raise InvalidRequest(
                f"Invalid value for '{name}': reasoning effort '{asked}' needs '{name}' of at "
                f"least {DEEP_EFFORT_MIN_MAX_TOKENS} (or leave it unset); got {value}.",
                param="max_tokens",
            )

    def _budget(self, effort: inference_pb2.Reasoning.Effort.ValueType, output_limit: int) -> int:
        if effort == OFF:
            return 0
        cap = max(1, output_limit * MAX_BUDGET_PERCENT // 100)
        asked = self._budget_asked()
        if asked is not None:
            return min(asked, cap)
        return max(1, output_limit * BUDGET_PERCENT[effort] // 100)


def split_effort_suffix(model: str) -> tuple[str, SuffixEffort | None]:
    """`liv:high` → (`liv`, "high"); a name without a known suffix is returned whole."""
    base, colon, suffix = model.rpartition(":")
    if colon and base:
        for effort in SUFFIX_EFFORTS:
            if suffix == effort:
                return base, effort
    return model, None
