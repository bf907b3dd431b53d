"""BatchedLlamaEngine on the real Gemma 3 270M GGUF: exact usage, free system prompt,
max_tokens, stop strings, abort, context limits, generations decoded together, prefix reuse.
The model is loaded once for the module (about a second); generations are short and greedy
(temperature 0) so that runs can be compared."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import llama_cpp
import pytest
from llama_cpp import Llama, llama_chat_format

from regio_common.catalogue import Route
from regio_common.errors import CONTEXT_LENGTH_EXCEEDED, INVALID_LOGIT_BIAS
from regio_worker.engine.base import (
    ChatMessage,
    ContextCompressed,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    OutputFormat,
    TextDelta,
    TokenLogprob,
)
from regio_worker.engine.batch_scheduler import token_piece
from regio_worker.engine.llama_batched import BatchedLlamaEngine

STORY = "Write a long story about a dragon."
QUESTION = "What is the capital of France?"
SLOTS = 3


@pytest.fixture(scope="module")
async def engine(gemma_model_path: Path, gemma_route: Route) -> AsyncIterator[BatchedLlamaEngine]:
    loaded = BatchedLlamaEngine(
        gemma_model_path,
        chat_format=gemma_route.source.chat_format,
        n_ctx=gemma_route.context_length,
        n_threads=2,
        slots=SLOTS,
    )
    yield loaded
    await loaded.close()


def gemma_prompt_tokens(vocabulary: Llama, *user_turns: str) -> int:
    """Tokens of llama-cpp-python's own "gemma" formatting, as create_chat_completion counts."""
    messages = [{"role": "user", "content": turn} for turn in user_turns]
    prompt = llama_chat_format.format_gemma(messages=messages).prompt  # type: ignore[arg-type]
    return len(vocabulary.tokenize(prompt.encode(), add_bos=True, special=True))


def greedy(prompt: str, **fields: object) -> GenerationRequest:
    return GenerationRequest(
        transaction_id=f"txn-{uuid.uuid4().hex}",
        messages=(ChatMessage("user", prompt),),
        **{"temperature": 0.0, **fields},  # type: ignore[arg-type]
    )


async def run(
    engine: BatchedLlamaEngine, request: GenerationRequest
) -> tuple[str, GenerationFinished]:
    events: list[GenerationEvent] = [event async for event in engine.generate(request)]
    *deltas, final = events
    assert isinstance(final, GenerationFinished)
    assert all(isinstance(delta, TextDelta) for delta in deltas)
    return "".join(delta.text for delta in deltas if isinstance(delta, TextDelta)), final


async def test_prompt_tokens_equal_the_tokens_of_the_formatted_prompt(
    engine: BatchedLlamaEngine, vocabulary: Llama
) -> None:
    question = "What is the capital of France?"
    _, final = await run(engine, greedy(question, max_tokens=1))
    assert final.usage.prompt_tokens == gemma_prompt_tokens(vocabulary, question)
    assert final.usage.free_prompt_tokens == 0
    assert final.usage.completion_tokens == 1


async def test_free_system_prompt_is_kept_but_reported_apart_from_billable_tokens(
    engine: BatchedLlamaEngine, vocabulary: Llama
) -> None:
    question = "What is the capital of France?"
    free = "You are a geography teacher. Answer in one short sentence."
    _, final = await run(engine, greedy(question, max_tokens=1, free_system_prompt=free))
    billable = gemma_prompt_tokens(vocabulary, question)
    # Gemma has no system role: the text goes first in the user turn, as Gemma's template does.
    everything = gemma_prompt_tokens(vocabulary, f"{free}\n\n{question}")
    assert final.usage.prompt_tokens == billable
    assert final.usage.free_prompt_tokens == everything - billable > 10


async def test_max_tokens_gives_exactly_that_many_tokens_and_length(
    engine: BatchedLlamaEngine,
) -> None:
    text, final = await run(engine, greedy(STORY, max_tokens=5))
    assert final.finish_reason is FinishReason.LENGTH
    assert final.usage.completion_tokens == 5
    assert text


async def test_a_stop_string_ends_the_answer_and_never_appears_in_it(
    engine: BatchedLlamaEngine,
) -> None:
    unstopped, _ = await run(engine, greedy(STORY, max_tokens=24))
    middle = len(unstopped) // 2
    stop = unstopped[middle : middle + 4]
    text, final = await run(engine, greedy(STORY, max_tokens=24, stop=(stop,)))
    assert final.finish_reason is FinishReason.STOP
    assert stop not in text
    assert text == unstopped[: unstopped.find(stop)]


async def test_abort_mid_generation_ends_cancelled_with_exact_counts(
    engine: BatchedLlamaEngine,
) -> None:
    request = greedy(STORY, max_tokens=300)
    deltas: list[str] = []
    final: GenerationFinished | None = None
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
            if len(deltas) == 3:
                engine.abort(request.transaction_id)
        elif isinstance(event, GenerationFinished):
            final = event
    assert final is not None
    assert final.finish_reason is FinishReason.CANCELLED
    produced = final.usage.completion_tokens
    assert 3 <= produced < 20  # stopped within a token or a few (events already in flight)
    # Exact: the same greedy request limited to that many tokens yields the same text.
    text, limited = await run(engine, greedy(STORY, max_tokens=produced))
    assert limited.usage.completion_tokens == produced
    assert text == "".join(deltas)


async def test_same_seed_gives_the_same_sampled_answer(engine: BatchedLlamaEngine) -> None:
    def seeded(seed: int) -> GenerationRequest:
        return greedy(STORY, max_tokens=8, temperature=1.0, seed=seed)

    first, _ = await run(engine, seeded(1234))
    again, _ = await run(engine, seeded(1234))
    others = {(await run(engine, seeded(seed)))[0] for seed in (1, 2, 3)}
    assert first == again
    assert len(others | {first}) > 1  # the seed does steer sampling


async def test_identical_prompt_reuses_the_kv_cache_and_reports_cached_tokens(
    engine: BatchedLlamaEngine,
) -> None:
    question = "Name three colours."
    await run(engine, greedy(question, max_tokens=1))
    _, final = await run(engine, greedy(question, max_tokens=1))
    # All but the last prompt token, which is evaluated again for fresh logits.
    assert final.usage.cached_tokens == final.usage.prompt_tokens - 1


async def test_prompt_longer_than_the_context_is_an_error_with_a_clear_message(
    engine: BatchedLlamaEngine,
) -> None:
    text, final = await run(engine, greedy("hello " * 9000, max_tokens=10))
    assert text == ""
    assert final.finish_reason is FinishReason.ERROR
    assert "context" in final.error_message and "8192" in final.error_message
    assert final.usage.prompt_tokens > 8192
    assert final.usage.completion_tokens == 0


async def test_max_tokens_is_clamped_to_what_fits_in_the_context(
    gemma_model_path: Path,
) -> None:
    # llama.cpp rounds the context up to a multiple of 256: ask for the smallest one.
    small = BatchedLlamaEngine(gemma_model_path, chat_format="gemma", n_ctx=256, n_threads=2)
    try:

        def prompt_length(words: int) -> int:
            messages = [ChatMessage("user", "apple " * words)]
            return len(small.prompts.build(messages).tokens)

        per_word = prompt_length(11) - prompt_length(10)
        words = 10 + (small.n_ctx - 12 - prompt_length(10)) // per_word  # about 12 tokens left
        _, final = await run(small, greedy("apple " * words, max_tokens=500))
    finally:
        await small.close()
    assert final.finish_reason is FinishReason.LENGTH
    assert 0 < final.usage.completion_tokens < 40
    assert final.usage.prompt_tokens + final.usage.completion_tokens == small.n_ctx == 256


async def test_a_conversation_longer_than_the_context_loses_its_middle(
    gemma_model_path: Path,
) -> None:
    small = BatchedLlamaEngine(gemma_model_path, chat_format="gemma", n_ctx=512, n_threads=2)
    head = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "My name is Ada.")]
    middle: list[ChatMessage] = []
    for number in range(30):
        middle.append(ChatMessage("assistant", f"Noted fact {number}. " + "apple " * 10))
        middle.append(ChatMessage("user", f"Fact {number}: " + "pear " * 10))
    tail = [ChatMessage("assistant", "Noted."), ChatMessage("user", "What is my name?")]
    messages = (*head, *middle, *tail)
    request = GenerationRequest(
        transaction_id=f"txn-{uuid.uuid4().hex}",
        messages=messages,
        max_tokens=20,
        temperature=0.0,
    )
    try:
        events = [event async for event in small.generate(request)]
        opted_out = [
            event
            async for event in small.generate(
                replace(request, transaction_id=f"txn-{uuid.uuid4().hex}", middle_out=False)
            )
        ]

        def prompt_tokens(dropped: int) -> int:
            return len(small.prompts.build((*head, *messages[2 + dropped :])).tokens)

        assert small.prompts.count(messages) > small.n_ctx
        compressed, *deltas, final = events
        assert isinstance(compressed, ContextCompressed)
        dropped = compressed.dropped_messages
        assert 0 < dropped <= len(middle) and dropped % 2 == 0  # (assistant, user) rounds
        assert all(isinstance(delta, TextDelta) for delta in deltas)
        assert isinstance(final, GenerationFinished)
        assert final.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        # Billed: the prompt really evaluated; no more left out than needed for the answer.
        assert final.usage.prompt_tokens == prompt_tokens(dropped)
        assert final.usage.prompt_tokens + 20 <= small.n_ctx < prompt_tokens(dropped - 2) + 20
    finally:
        await small.close()
    [refused] = opted_out
    assert isinstance(refused, GenerationFinished)
    assert refused.error_code == CONTEXT_LENGTH_EXCEEDED


def test_long_token_pieces_are_not_lost(gemma_model_path: Path, vocabulary: Llama) -> None:
    """Llama.detokenize returns b"" for pieces over 32 bytes (llama-cpp-python 0.3.36)."""
    word = " পাকিস্তানের"  # one Gemma token of 34 bytes
    tokens = vocabulary.tokenize(word.encode(), add_bos=False, special=False)
    assert len(tokens) == 1 and len(word.encode()) > 32
    vocab = llama_cpp.llama_model_get_vocab(vocabulary.model)
    assert token_piece(vocab, tokens[0]).decode() == word


async def timed_run(
    engine: BatchedLlamaEngine, request: GenerationRequest, started: float
) -> tuple[float, float, GenerationFinished]:
    """(first text, end) in seconds since `started`, and the final event."""
    first: float | None = None
    final: GenerationFinished | None = None
    async for event in engine.generate(request):
        if isinstance(event, TextDelta) and first is None:
            first = time.perf_counter() - started
        elif isinstance(event, GenerationFinished):
            final = event
    assert first is not None and final is not None
    return first, time.perf_counter() - started, final


async def test_generations_up_to_the_slot_count_stream_at_the_same_time(
    engine: BatchedLlamaEngine,
) -> None:
    started = time.perf_counter()
    runs = await asyncio.gather(
        *(
            timed_run(engine, greedy(f"{STORY} Number {n}.", max_tokens=40), started)
            for n in range(SLOTS)
        )
    )
    for _, _, final in runs:
        assert final.finish_reason is FinishReason.LENGTH
        assert final.usage.completion_tokens == 40
    # Decoded together: every stream began before any of them ended (one at a time, the last
    # one would wait for two whole answers).
    assert max(first for first, _, _ in runs) < min(end for _, end, _ in runs)


async def test_a_request_beyond_the_slots_waits_and_then_completes(
    engine: BatchedLlamaEngine,
) -> None:
    started = time.perf_counter()
    runs = await asyncio.gather(
        *(
            timed_run(engine, greedy(f"{STORY} Part {n}.", max_tokens=12), started)
            for n in range(SLOTS + 1)
        )
    )
    assert [final.usage.completion_tokens for _, _, final in runs] == [12] * (SLOTS + 1)
    firsts = sorted(first for first, _, _ in runs)
    assert firsts[-1] >= min(end for _, end, _ in runs)  # the last one waited for a free slot


async def test_aborting_one_generation_leaves_the_others_running(
    engine: BatchedLlamaEngine,
) -> None:
    victim = greedy(STORY, max_tokens=200)
    keeper = greedy(f"{STORY} Another one.", max_tokens=30)

    async def abort_soon() -> GenerationFinished:
        final: GenerationFinished | None = None
        async for event in engine.generate(victim):
            if isinstance(event, TextDelta):
                engine.abort(victim.transaction_id)
            elif isinstance(event, GenerationFinished):
                final = event
        assert final is not None
        return final

    aborted, (_, kept) = await asyncio.gather(abort_soon(), run(engine, keeper))
    assert aborted.finish_reason is FinishReason.CANCELLED
    assert aborted.usage.completion_tokens < 20
    assert kept.finish_reason is FinishReason.LENGTH and kept.usage.completion_tokens == 30


async def test_a_shared_free_system_prompt_is_reused_from_the_kv_cache(
    engine: BatchedLlamaEngine,
) -> None:
    free = "You are a terse assistant for a bakery. Answer with one word when you can."
    await run(engine, greedy("Name a bread.", max_tokens=1, free_system_prompt=free))
    _, final = await run(engine, greedy("Name a cake.", max_tokens=1, free_system_prompt=free))
    # The free prompt's tokens come first and are free anyway; the user turn's opening tokens
    # shared with the previous prompt are the billable part that was reused.
    assert final.usage.free_prompt_tokens > 10
    assert 0 < final.usage.cached_tokens < final.usage.prompt_tokens


async def test_json_object_mode_answers_valid_json_that_is_billed(
    engine: BatchedLlamaEngine,
) -> None:
    request = greedy(
        'Reply with a JSON object with the key "answer" and the value "yes".',
        max_tokens=120,
        output_format=OutputFormat.JSON_OBJECT,
    )
    text, final = await run(engine, request)
    assert isinstance(json.loads(text), dict)
    assert final.finish_reason is FinishReason.STOP  # the grammar let it end only when complete
    assert final.unbilled_reason == ""


async def test_json_schema_mode_follows_the_schema(engine: BatchedLlamaEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    request = greedy(
        "Name a city and its population.",
        max_tokens=120,
        output_format=OutputFormat.JSON_SCHEMA,
        json_schema=json.dumps(schema),
    )
    text, _ = await run(engine, request)
    answer = json.loads(text)
    assert isinstance(answer["city"], str) and isinstance(answer["population"], int)


async def test_json_cut_by_max_tokens_ends_with_length(engine: BatchedLlamaEngine) -> None:
    request = greedy(
        "Describe a cat as JSON.", max_tokens=3, output_format=OutputFormat.JSON_OBJECT
    )
    text, final = await run(engine, request)
    assert final.finish_reason is FinishReason.LENGTH
    with pytest.raises(ValueError):
        json.loads(text)  # the worker's server marks such an answer not billable


async def test_a_schema_that_cannot_be_enforced_is_a_clear_error(
    engine: BatchedLlamaEngine,
) -> None:
    request = greedy(
        "Hi", max_tokens=5, output_format=OutputFormat.JSON_SCHEMA, json_schema="{not json"
    )
    text, final = await run(engine, request)
    assert text == ""
    assert final.finish_reason is FinishReason.ERROR
    assert final.error_code == "invalid_response_format"
    assert final.usage.completion_tokens == 0


async def run_with_logprobs(
    engine: BatchedLlamaEngine, request: GenerationRequest
) -> tuple[str, list[TokenLogprob], GenerationFinished]:
    events = [event async for event in engine.generate(request)]
    *deltas, final = events
    assert isinstance(final, GenerationFinished)
    texts = [delta for delta in deltas if isinstance(delta, TextDelta)]
    return (
        "".join(delta.text for delta in texts),
        [entry for delta in texts for entry in delta.logprobs],
        final,
    )


def single_token(vocabulary: Llama, text: bytes) -> int:
    """The id of the one token whose piece is `text`."""
    [token] = vocabulary.tokenize(text, add_bos=False, special=False)
    assert token_piece(llama_cpp.llama_model_get_vocab(vocabulary.model), token) == text
    return token


async def test_greedy_tokens_are_the_most_likely_of_their_top_logprobs(
    engine: BatchedLlamaEngine,
) -> None:
    text, logprobs, final = await run_with_logprobs(
        engine, greedy(STORY, max_tokens=16, top_logprobs=5)
    )
    assert final.finish_reason is FinishReason.LENGTH
    assert len(logprobs) == final.usage.completion_tokens == 16
    # The tokens' bytes are the answer's bytes.
    assert b"".join(entry.token for entry in logprobs) == text.encode()
    for entry in logprobs:
        assert len(entry.top_logprobs) == 5
        best = entry.top_logprobs[0]
        assert entry.logprob == best.logprob == max(top.logprob for top in entry.top_logprobs)
        assert entry.token == best.token
        assert all(top.logprob <= 0 for top in entry.top_logprobs)
        assert sum(math.exp(top.logprob) for top in entry.top_logprobs) <= 1.0 + 1e-5
    # Asking for logprobs changes nothing in the answer.
    plain, _ = await run(engine, greedy(STORY, max_tokens=16))
    assert plain == text


async def test_sampled_tokens_get_logprobs_and_the_same_seed_gives_the_same_answer(
    engine: BatchedLlamaEngine,
) -> None:
    request = greedy(STORY, max_tokens=12, temperature=1.0, seed=99, top_logprobs=2)
    text, logprobs, final = await run_with_logprobs(engine, request)
    plain, _ = await run(engine, greedy(STORY, max_tokens=12, temperature=1.0, seed=99))
    assert text == plain
    assert len(logprobs) == final.usage.completion_tokens
    assert b"".join(entry.token for entry in logprobs) == text.encode()
    for entry in logprobs:
        assert entry.logprob <= entry.top_logprobs[0].logprob <= 0


async def test_logprobs_without_top_logprobs_and_with_a_stop_string(
    engine: BatchedLlamaEngine,
) -> None:
    unstopped, _ = await run(engine, greedy(STORY, max_tokens=24))
    stop = unstopped[len(unstopped) // 2 :][:4]
    text, logprobs, final = await run_with_logprobs(
        engine, greedy(STORY, max_tokens=24, stop=(stop,), top_logprobs=0)
    )
    assert final.finish_reason is FinishReason.STOP
    assert text == unstopped[: unstopped.find(stop)]
    assert all(entry.top_logprobs == () for entry in logprobs)
    # The tokens cut off by the stop string are not reported; at most the one that straddles
    # the answer's end carries bytes beyond it.
    joined = b"".join(entry.token for entry in logprobs)
    assert joined.startswith(text.encode())
    assert len(joined) - len(logprobs[-1].token) < len(text.encode())
    assert len(logprobs) < final.usage.completion_tokens


async def test_a_negative_logit_bias_on_the_greedy_first_token_changes_it(
    engine: BatchedLlamaEngine, vocabulary: Llama
) -> None:
    _, [first], _ = await run_with_logprobs(engine, greedy(QUESTION, max_tokens=1, top_logprobs=2))
    banned = single_token(vocabulary, first.token)
    _, [biased], _ = await run_with_logprobs(
        engine,
        greedy(QUESTION, max_tokens=1, top_logprobs=2, logit_bias=((banned, -100.0),)),
    )
    assert biased.token != first.token
    # The runner-up takes its place, now with a higher probability (logprobs are after bias).
    assert biased.token == first.top_logprobs[1].token
    assert biased.logprob > first.top_logprobs[1].logprob
    assert first.token not in [top.token for top in biased.top_logprobs]
    # Without logprobs, the greedy argmax respects the bias too.
    text, _ = await run(engine, greedy(QUESTION, max_tokens=1, logit_bias=((banned, -100.0),)))
    assert text.encode() == biased.token


@pytest.mark.parametrize(
    ("temperature", "top_logprobs"), [(0.0, None), (0.0, 1), (1.0, None), (1.0, 1)]
)
async def test_a_positive_logit_bias_forces_a_token(
    engine: BatchedLlamaEngine, vocabulary: Llama, temperature: float, top_logprobs: int | None
) -> None:
    """Greedy: the argmax of the biased logits; sampled: llama.cpp's logit_bias sampler."""
    forced = single_token(vocabulary, b" zebra")
    request = greedy(
        QUESTION,
        max_tokens=2,
        temperature=temperature,
        seed=5,
        logit_bias=((forced, 100.0),),
        top_logprobs=top_logprobs,
    )
    text, logprobs, _ = await run_with_logprobs(engine, request)
    assert text == " zebra zebra"
    if top_logprobs is None:
        assert logprobs == []
    else:
        assert [entry.token for entry in logprobs] == [b" zebra", b" zebra"]
        assert all(entry.logprob > -1e-3 for entry in logprobs)  # all but certain after the bias


async def test_a_logit_bias_outside_the_vocabulary_is_refused(
    engine: BatchedLlamaEngine,
) -> None:
    request = greedy(QUESTION, max_tokens=3, logit_bias=((5, 1.0), (engine.n_vocab, -1.0)))
    text, final = await run(engine, request)
    assert text == ""
    assert final.finish_reason is FinishReason.ERROR
    assert final.error_code == INVALID_LOGIT_BIAS
    assert str(engine.n_vocab) in final.error_message
    assert final.usage.completion_tokens == 0
