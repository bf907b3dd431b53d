"""Reasoning on a thinking model, without a model: the split of sampled text into reasoning and
answer at the end marker, the budget and loop rescues, the prompt's reasoning block and
instruction, and the catalogue's markers."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from regio_common.catalogue import Catalogue
from regio_worker.app import reasoning_markers
from regio_worker.engine.base import ReasoningEffort
from regio_worker.engine.reasoning import (
    LoopDetector,
    ReasoningMarkers,
    ReasoningPhase,
    ReasoningStep,
    reasoning_budget,
)
from regio_worker.engine.reasoning_prompt import (
    DEEP_REASONING_INSTRUCTION,
    ReasoningPrompt,
    reasoning_prefill,
    reasoning_system_prompt,
)

THINK = ReasoningMarkers("<think>", "</think>")
FORCED_END = (901, 902, 903)  # the test's token ids of "</think>\n\n"
BIG_BUDGET = 10_000


def phase(budget: int = BIG_BUDGET, **options: object) -> ReasoningPhase:
    return ReasoningPhase(THINK, budget=budget, forced_end=FORCED_END, **options)  # type: ignore[arg-type]


def take_all(reasoning: ReasoningPhase, pieces: Sequence[str]) -> list[ReasoningStep]:
    """Feeds the pieces as tokens 1, 2, 3, … until the answer begins; the rest is answer."""
    steps = []
    for token, piece in enumerate(pieces, start=1):
        if not reasoning.thinking:
            steps.append(ReasoningStep(answer=piece))
            continue
        steps.append(reasoning.take(token, piece))
    return steps


def shown(steps: Sequence[ReasoningStep]) -> tuple[str, str]:
    return "".join(s.reasoning for s in steps), "".join(s.answer for s in steps)


# --- splitting reasoning from the answer ------------------------------------------------------


def test_the_end_marker_split_over_tokens_ends_the_reasoning_and_is_never_shown() -> None:
    reasoning = phase()
    steps = take_all(
        reasoning, ["Paris is", " the capital", ".\n</", "think", ">\n\n", "Paris", "."]
    )
    assert shown(steps) == ("Paris is the capital.", "Paris.")
    assert [step.closed for step in steps] == [False, False, False, False, True, False, False]
    assert reasoning.tokens == 5  # up to the token that completed the marker
    assert reasoning.rescued == ""
    assert all(step.forced == () for step in steps)


def test_text_that_only_looks_like_the_marker_stays_reasoning_in_order() -> None:
    reasoning = phase()
    steps = take_all(reasoning, ["Use </", "b> and </th", "ink tags", " often"])
    assert shown(steps) == ("Use </b> and </think tags often", "")
    assert reasoning.thinking


def test_reasoning_text_is_released_as_soon_as_it_cannot_be_the_marker() -> None:
    reasoning = phase()
    assert reasoning.take(1, "First </").reasoning == "First"
    assert reasoning.take(2, "x").reasoning == " </x"


def test_whitespace_around_the_reasoning_and_before_the_answer_is_dropped() -> None:
    reasoning = phase()
    steps = take_all(reasoning, ["\n", "  Think", " hard", "\n\n", "</think>", "\n\n", " Yes", "!"])
    assert shown(steps) == ("Think hard", "Yes!")
    # The blank token after the marker is not reasoning: the marker's token was the last.
    assert reasoning.tokens == 5


def test_answer_text_in_the_same_token_as_the_end_of_the_marker_is_answer() -> None:
    reasoning = phase()
    steps = take_all(reasoning, ["ok</think", ">\n\nThe answer", " is 4"])
    assert shown(steps) == ("ok", "The answer is 4")
    assert steps[1].closed and not reasoning.thinking


def test_a_one_token_end_marker_that_renders_as_no_text_is_recognised_by_its_id() -> None:
    end_token = 777
    reasoning = phase(end_token=end_token)
    assert reasoning.take(1, "Thinking").reasoning == "Thinking"
    step = reasoning.take(end_token, "")  # a control token: no text
    assert step.closed and step.forced == ()
    assert reasoning.take(2, "Answer") == ReasoningStep(answer="Answer")


def test_text_held_back_when_the_generation_ends_inside_the_reasoning_is_shown() -> None:
    reasoning = phase()
    assert reasoning.take(1, "Almost done </thi").reasoning == "Almost done"
    assert reasoning.finish() == " </thi"


# --- budget rescue ------------------------------------------------------------------------------


def test_the_budget_cuts_the_reasoning_and_forces_the_end_marker() -> None:
    reasoning = phase(budget=3)
    steps = [reasoning.take(token, piece) for token, piece in enumerate(["a", " b", " </th"], 1)]
    assert [step.closed for step in steps] == [False, False, True]
    assert steps[-1].forced == FORCED_END
    assert shown(steps) == ("a b </th", "")  # the held text was not the marker after all
    assert reasoning.rescued == "budget"
    assert reasoning.tokens == 3
    # The model answers after the forced marker; its answer tokens are not reasoning tokens.
    assert reasoning.take(4, "\n") == ReasoningStep()
    assert reasoning.take(5, "Answer") == ReasoningStep(answer="Answer")
    assert not reasoning.thinking and reasoning.tokens == 3


def test_a_reasoning_that_ends_on_the_budget_token_itself_is_not_rescued() -> None:
    reasoning = phase(budget=2)
    steps = [reasoning.take(1, "done"), reasoning.take(2, "</think>")]
    assert steps[-1].closed and steps[-1].forced == ()
    assert reasoning.rescued == ""


@pytest.mark.parametrize(
    ("effort", "max_tokens", "budget"),
    [
        (ReasoningEffort.MEDIUM, 1000, 500),
        (ReasoningEffort.HIGH, 1000, 750),
        (ReasoningEffort.MAX, 1000, 900),
        (ReasoningEffort.MEDIUM, 1, 1),
    ],
)
def test_default_budgets_are_the_efforts_share_of_max_tokens(
    effort: ReasoningEffort, max_tokens: int, budget: int
) -> None:
    assert reasoning_budget(effort, None, max_tokens) == budget


def test_a_clients_budget_is_kept_but_leaves_the_answer_a_tenth_of_max_tokens() -> None:
    assert reasoning_budget(ReasoningEffort.MEDIUM, 300, 1000) == 300
    assert reasoning_budget(ReasoningEffort.MEDIUM, 5000, 1000) == 900
    assert reasoning_budget(ReasoningEffort.OFF, 300, 1000) == 0


# --- loop rescue --------------------------------------------------------------------------------


def words_as_tokens(text: str) -> list[int]:
    ids: dict[str, int] = {}
    return [ids.setdefault(word, len(ids)) for word in text.split()]


def first_loop_at(detector: LoopDetector, tokens: Sequence[int]) -> int | None:
    for index, token in enumerate(tokens):
        if detector.push(token):
            return index
    return None


def test_reasoning_that_goes_round_in_circles_is_caught() -> None:
    cycle = words_as_tokens(
        "Wait , let me recompute the sum of the first two numbers : three plus four is seven , "
        "so the total is seven . Hmm , but the question asks for the product ."
    )
    detected = first_loop_at(LoopDetector(), cycle * 40)
    assert detected is not None
    assert detected < 600  # soon after the window (512 tokens) is full of the loop


def test_a_loop_with_small_variations_is_caught_too() -> None:
    rng = random.Random(7)
    cycle = list(range(60))
    tokens = []
    for _ in range(30):
        varied = list(cycle)
        varied[rng.randrange(len(varied))] = 1000 + rng.randrange(1000)  # one token differs
        tokens += varied
    assert first_loop_at(LoopDetector(), tokens) is not None


def test_long_structured_reasoning_that_moves_on_is_not_a_loop() -> None:
    # Every line has the same shape, as step-by-step arithmetic does, but says something new.
    steps = " ".join(
        f"Step {i} : we add {i} to the running total , which now gives {i * (i + 1) // 2} ."
        for i in range(1, 200)
    )
    assert first_loop_at(LoopDetector(), words_as_tokens(steps)) is None


def test_varied_text_is_not_a_loop() -> None:
    rng = random.Random(11)
    tokens = [rng.randrange(5000) for _ in range(5000)]
    assert first_loop_at(LoopDetector(), tokens) is None


def test_a_loop_in_the_reasoning_is_rescued_as_a_loop() -> None:
    reasoning = phase(loop_detector=LoopDetector(window=40, ngram=4))
    steps = [reasoning.take(token % 5, f" t{token % 5}") for token in range(100)]
    closed = [index for index, step in enumerate(steps) if step.closed]
    assert closed and steps[closed[0]].forced == FORCED_END
    assert reasoning.rescued == "loop"
    assert reasoning.tokens == closed[0] + 1 < 100


# --- the prompt ---------------------------------------------------------------------------------


GENERATION_PROMPT = "<start_of_turn>model\n"


@pytest.mark.parametrize(
    ("effort", "prefill"),
    [
        (ReasoningEffort.OFF, "<think>\n\n</think>\n\n"),
        (ReasoningEffort.MEDIUM, "<think>\n"),
        (ReasoningEffort.HIGH, "<think>\n"),
        (ReasoningEffort.MAX, "<think>\n"),
    ],
)
def test_the_prompt_ends_with_the_reasoning_block_of_the_effort(
    effort: ReasoningEffort, prefill: str
) -> None:
    assert reasoning_prefill(effort, THINK, GENERATION_PROMPT) == prefill


def test_a_template_that_opens_the_reasoning_itself_gets_no_second_start_marker() -> None:
    opened = "<|Assistant|><think>\n"
    assert reasoning_prefill(ReasoningEffort.MEDIUM, THINK, opened) == ""
    assert reasoning_prefill(ReasoningEffort.OFF, THINK, opened) == "\n</think>\n\n"
    assert reasoning_prefill(ReasoningEffort.MEDIUM, THINK, "<|Assistant|><think>") == "\n"


def test_deep_efforts_add_the_instruction_after_the_free_system_prompt() -> None:
    free = "You are a tax adviser."
    assert reasoning_system_prompt(free, ReasoningEffort.MEDIUM, THINK) == free
    assert reasoning_system_prompt(free, ReasoningEffort.HIGH, THINK) == (
        f"{free}\n\n{DEEP_REASONING_INSTRUCTION}"
    )
    assert reasoning_system_prompt("", ReasoningEffort.MAX, THINK) == DEEP_REASONING_INSTRUCTION


def test_a_models_thinking_switch_opens_the_system_prompt_when_it_reasons() -> None:
    gemma4 = ReasoningMarkers("<|channel>thought", "<channel|>", switch="<|think|>")
    assert reasoning_system_prompt("Be brief.", ReasoningEffort.MEDIUM, gemma4) == (
        "<|think|>Be brief."
    )
    assert reasoning_system_prompt("Be brief.", ReasoningEffort.OFF, gemma4) == "Be brief."


def test_reasoning_prompt_tokens_for_the_prefill_and_the_rescue() -> None:
    def tokenize(text: str) -> list[int]:
        return [ord(char) for char in text]

    def render(tokens: Sequence[int]) -> str:
        return "".join(chr(token) for token in tokens)

    prompt = ReasoningPrompt(THINK, tokenize, render)
    assert render(prompt.forced_end) == "</think>\n\n"
    assert prompt.end_token is None  # several tokens: found in the text
    tail = tokenize("user\nHi<end_of_turn>\n" + GENERATION_PROMPT)
    assert render(prompt.prefill(tail, ReasoningEffort.MEDIUM)) == "<think>\n"
    one_token = ReasoningPrompt(ReasoningMarkers("<", ">"), tokenize, render)
    assert one_token.end_token == ord(">")


# --- the catalogue ------------------------------------------------------------------------------


def catalogue(source: dict[str, object], thinking: bool) -> Catalogue:
    return Catalogue.model_validate(
        {
            "regions": {"eu": ["de"]},
            "routes": {
                "r": {
                    "base_models": [],
                    "source": {"gguf_path": "/m.gguf", **source},
                    "context_length": 1024,
                    "max_output_tokens": 512,
                    "input_price_eur_per_mtok": "1",
                    "output_price_eur_per_mtok": "1",
                    "regions": ["eu"],
                    "capabilities": {"thinking": thinking},
                }
            },
        }
    )


def test_a_thinking_route_needs_the_models_markers() -> None:
    with pytest.raises(ValidationError, match="thinking_start and thinking_end"):
        catalogue({}, thinking=True)
    with pytest.raises(ValidationError, match="go together"):
        catalogue({"thinking_start": "<think>"}, thinking=False)


def test_the_worker_reads_the_markers_of_its_route() -> None:
    markers: dict[str, object] = {"thinking_start": "<think>", "thinking_end": "</think>"}
    route = catalogue(markers, thinking=True).routes["r"]
    assert reasoning_markers(route) == THINK
    assert reasoning_markers(catalogue({}, thinking=False).routes["r"]) is None
