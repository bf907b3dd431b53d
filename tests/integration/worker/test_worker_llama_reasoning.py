"""Reasoning and thinking rescue in BatchedLlamaEngine on the real Gemma 3 270M GGUF.

Gemma 270M is no thinking model, but the mechanism is real: given the markers `<think>` /
`</think>`, the engine's prompt puts it in its reasoning from the first token, it never closes
that reasoning by itself, so the budget cuts it, the engine feeds `</think>` to the model and the
model answers. Generations are greedy (temperature 0) and short."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import llama_cpp
import numpy
import pytest
from llama_cpp import Llama, llama_chat_format

from regio_common.catalogue import Route
from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    OutputFormat,
    ReasoningDelta,
    ReasoningEffort,
    TextDelta,
    TokenLogprob,
)
from regio_worker.engine.llama_batched import BatchedLlamaEngine, GpuPlacement
from regio_worker.engine.reasoning import ReasoningMarkers
from regio_worker.engine.reasoning_prompt import DEEP_REASONING_INSTRUCTION

STORY = "Write a long story about a dragon."
QUESTION = "What is the capital of France?"
THINK = ReasoningMarkers("<think>", "</think>")
N_CTX = 1024
BUDGET = 16
MAX_TOKENS = 40


@pytest.fixture(scope="module")
async def engine(gemma_model_path: Path, gemma_route: Route) -> AsyncIterator[BatchedLlamaEngine]:
    loaded = BatchedLlamaEngine(
        gemma_model_path,
        chat_format=gemma_route.source.chat_format,
        n_ctx=N_CTX,
        n_threads=2,
        slots=2,
        # Set, not left to llama.cpp: the reference below must compute the same numbers.
        gpu=GpuPlacement(flash_attention=True),
        reasoning_markers=THINK,
    )
    yield loaded
    await loaded.close()


def gemma_prompt(vocabulary: Llama, user_turn: str) -> list[int]:
    """Tokens of llama-cpp-python's own "gemma" formatting of one user turn."""
    messages = [{"role": "user", "content": user_turn}]
    prompt = llama_chat_format.format_gemma(messages=messages).prompt  # type: ignore[arg-type]
    return vocabulary.tokenize(prompt.encode(), add_bos=True, special=True)


def tokens_of(vocabulary: Llama, text: str) -> list[int]:
    return vocabulary.tokenize(text.encode(), add_bos=False, special=True)


def request(prompt: str, effort: ReasoningEffort, **fields: object) -> GenerationRequest:
    return GenerationRequest(
        transaction_id=f"txn-{uuid.uuid4().hex}",
        messages=(ChatMessage("user", prompt),),
        reasoning_effort=effort,
        **{"temperature": 0.0, **fields},  # type: ignore[arg-type]
    )


@dataclass
class Run:
    reasoning: str
    answer: str
    logprobs: list[TokenLogprob]
    final: GenerationFinished
    # The kinds of the deltas in order, runs merged: ["reasoning", "answer"] when the reasoning
    # came first and the answer after it.
    order: list[str]


async def run(engine: BatchedLlamaEngine, generation: GenerationRequest) -> Run:
    events = [event async for event in engine.generate(generation)]
    *deltas, final = events
    assert isinstance(final, GenerationFinished)
    kinds = ["answer" if isinstance(d, TextDelta) else "reasoning" for d in deltas]
    order = [kind for index, kind in enumerate(kinds) if index == 0 or kinds[index - 1] != kind]
    assert all(isinstance(d, TextDelta | ReasoningDelta) for d in deltas)
    texts = [d for d in deltas if isinstance(d, TextDelta)]
    return Run(
        reasoning="".join(d.text for d in deltas if isinstance(d, ReasoningDelta)),
        answer="".join(d.text for d in texts),
        logprobs=[entry for d in texts for entry in d.logprobs],
        final=final,
        order=order,
    )


@pytest.fixture(scope="module")
async def rescued(engine: BatchedLlamaEngine) -> Run:
    """A medium-effort story whose reasoning the budget cuts."""
    generation = request(
        STORY, ReasoningEffort.MEDIUM, max_tokens=MAX_TOKENS, reasoning_budget=BUDGET
    )
    return await run(engine, generation)


async def test_the_budget_cuts_the_reasoning_and_the_model_answers(
    rescued: Run, vocabulary: Llama
) -> None:
    assert rescued.reasoning and rescued.answer
    assert rescued.order == ["reasoning", "answer"]
    final = rescued.final
    assert final.thinking_rescued == "budget"
    assert final.finish_reason is FinishReason.LENGTH
    # Exact usage: every sampled token is a completion token, the forced `</think>` is not;
    # the reasoning took exactly its budget; the `<think>` opening the answer is free.
    assert final.usage.completion_tokens == MAX_TOKENS
    assert final.usage.reasoning_tokens == BUDGET
    assert final.usage.prompt_tokens == len(gemma_prompt(vocabulary, STORY))
    assert final.usage.free_prompt_tokens == len(tokens_of(vocabulary, "<think>\n"))


# Logits this close to the best one are a tie the batch layout may break either way (the engine
# decodes in other batches than one token at a time; seen: 0.05-0.08 on some CPUs, at the very
# first reasoning token on an AVX-512 one).
NEAR_TIE = 0.25


def greedy_tokens(
    model: Llama, count: int, following: str, banned: Sequence[int] = ()
) -> list[int]:
    """`count` greedy tokens after what the model evaluated so far, fed back one at a time.
    At a near-tie the tied token that continues `following` (the engine's text) is taken, as
    the engine may have broken the tie the other way; it stops where no token within a
    near-tie of the best continues it (the engine chose what greedy decoding would not)."""
    tokens: list[int] = []
    for _ in range(count):
        last = llama_cpp.llama_get_logits_ith(model.ctx, -1)
        logits = numpy.ctypeslib.as_array(last, shape=(model.n_vocab(),)).copy()
        logits[list(banned)] = -numpy.inf
        best = int(logits.argmax())
        tied = numpy.flatnonzero(logits >= logits[best] - NEAR_TIE)
        candidates = [best, *(int(t) for t in tied if t != best)]
        chosen = next((t for t in candidates if _continues(model, [*tokens, t], following)), None)
        if chosen is None:
            break
        tokens.append(chosen)
        model.eval([chosen])
    return tokens


def _continues(model: Llama, tokens: list[int], text: str) -> bool:
    return text.startswith(model.detokenize(tokens).decode(errors="ignore").lstrip())


def test_the_answer_continues_from_the_forced_end_marker_after_the_reasoning(
    rescued: Run, gemma_model_path: Path, vocabulary: Llama
) -> None:
    """The same tokens through llama-cpp-python's own Llama, one sequence, no scheduler: the
    prompt with `<think>\\n`, the budget's greedy reasoning (end of turn banned), `</think>\\n\\n`
    fed in, then the greedy answer: the engine produced exactly that text (near-ties aside)."""
    reference = Llama(
        model_path=str(gemma_model_path), n_ctx=256, n_threads=2, flash_attn=True, verbose=False
    )
    try:
        vocab = llama_cpp.llama_model_get_vocab(reference.model)
        end_of_turn = [
            t for t in range(reference.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)
        ]
        reference.eval(gemma_prompt(vocabulary, STORY) + tokens_of(vocabulary, "<think>\n"))
        reasoning = greedy_tokens(reference, BUDGET, rescued.reasoning, banned=end_of_turn)
        text = reference.detokenize
        assert text(reasoning).decode().strip() == rescued.reasoning
        assert len(reasoning) == BUDGET
        reference.eval(tokens_of(vocabulary, "</think>\n\n"))
        answer = greedy_tokens(reference, MAX_TOKENS - BUDGET, rescued.answer)
        assert len(answer) == MAX_TOKENS - BUDGET, (
            f"the engine's answer left greedy decoding after {len(answer)} tokens: "
            f"{text(answer).decode(errors='ignore')!r} then {rescued.answer!r}"
        )
        assert rescued.answer.startswith(text(answer).decode(errors="ignore").lstrip())
    finally:
        reference.close()


async def test_effort_off_answers_at_once_behind_an_empty_reasoning_block(
    engine: BatchedLlamaEngine, vocabulary: Llama
) -> None:
    result = await run(engine, request(QUESTION, ReasoningEffort.OFF, max_tokens=8))
    assert result.reasoning == "" and result.answer
    usage = result.final.usage
    assert usage.reasoning_tokens == 0 and result.final.thinking_rescued == ""
    assert usage.prompt_tokens == len(gemma_prompt(vocabulary, QUESTION))
    assert usage.free_prompt_tokens == len(tokens_of(vocabulary, "<think>\n\n</think>\n\n"))


async def test_a_deep_effort_adds_its_instruction_as_free_prompt_tokens(
    engine: BatchedLlamaEngine, vocabulary: Llama
) -> None:
    generation = request(QUESTION, ReasoningEffort.HIGH, max_tokens=6, reasoning_budget=3)
    result = await run(engine, generation)
    usage = result.final.usage
    assert usage.reasoning_tokens == 3 and result.final.thinking_rescued == "budget"
    billable = len(gemma_prompt(vocabulary, QUESTION))
    # Gemma has no system role: the instruction goes first in the user turn.
    instructed = len(gemma_prompt(vocabulary, f"{DEEP_REASONING_INSTRUCTION}\n\n{QUESTION}"))
    assert usage.prompt_tokens == billable
    assert usage.free_prompt_tokens == instructed - billable + len(
        tokens_of(vocabulary, "<think>\n")
    )


async def test_the_json_grammar_starts_with_the_answer(engine: BatchedLlamaEngine) -> None:
    generation = request(
        'Reply with a JSON object with the key "answer" and the value "yes".',
        ReasoningEffort.MEDIUM,
        max_tokens=120,
        reasoning_budget=8,
        output_format=OutputFormat.JSON_OBJECT,
    )
    result = await run(engine, generation)
    assert result.final.thinking_rescued == "budget"
    assert not result.reasoning.startswith("{")  # the reasoning was free text
    assert isinstance(json.loads(result.answer), dict)
    assert result.final.finish_reason is FinishReason.STOP


async def test_logprobs_are_those_of_the_answer_tokens_only(engine: BatchedLlamaEngine) -> None:
    generation = request(
        STORY, ReasoningEffort.MEDIUM, max_tokens=20, reasoning_budget=8, top_logprobs=2
    )
    result = await run(engine, generation)
    usage = result.final.usage
    assert usage.reasoning_tokens == 8
    assert len(result.logprobs) == usage.completion_tokens - usage.reasoning_tokens
    assert b"".join(entry.token for entry in result.logprobs).decode() == result.answer


async def test_a_rescue_leaves_a_generation_decoded_beside_it_unchanged(
    engine: BatchedLlamaEngine,
) -> None:
    plain = request(QUESTION, ReasoningEffort.OFF, max_tokens=24)
    alone = await run(engine, plain)
    reasoning = request(STORY, ReasoningEffort.MEDIUM, max_tokens=24, reasoning_budget=6)
    again = replace(plain, transaction_id=f"txn-{uuid.uuid4().hex}")
    together, cut = await asyncio.gather(run(engine, again), run(engine, reasoning))
    assert cut.final.thinking_rescued == "budget" and cut.answer
    assert together.answer == alone.answer
    assert together.final.usage.completion_tokens == alone.final.usage.completion_tokens
