"""`logprobs`, `top_logprobs` and `logit_bias` through the whole platform with the official SDK
and the real model: the SDK parses the log-probabilities of JSON answers and of stream chunks,
the tokens' bytes add up to the answer, and a bias steers or is refused."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp
import openai
import pytest
from llama_cpp import Llama
from openai.types.chat import ChatCompletionTokenLogprob

from regio_common.catalogue import Catalogue
from regio_common.settings import DEFAULT_CATALOGUE
from regio_devstack.stack import Stack
from regio_worker.engine.batch_scheduler import token_piece
from regio_worker.model_files import resolve_model_path

QUESTION: Any = [{"role": "user", "content": "What is the capital of France?"}]
STORY: Any = [{"role": "user", "content": "Write a long story about a dragon."}]


def check_entries(entries: list[ChatCompletionTokenLogprob], top: int) -> None:
    for entry in entries:
        assert entry.bytes is not None and entry.logprob <= 0
        assert len(entry.top_logprobs) == top
        if top:
            # Greedy: each token is the most likely of its position.
            assert entry.logprob == entry.top_logprobs[0].logprob
            assert entry.top_logprobs[0].bytes == entry.bytes
            assert sum(math.exp(other.logprob) for other in entry.top_logprobs) <= 1.0 + 1e-5


def test_the_sdk_parses_logprobs_of_a_json_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="liv", messages=STORY, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert completion.usage is not None and choice.finish_reason == "length"
    assert len(entries) == completion.usage.completion_tokens == 12
    check_entries(entries, top=3)
    content = choice.message.content
    assert content is not None
    assert b"".join(bytes(entry.bytes or []) for entry in entries) == content.encode()
    assert "".join(entry.token for entry in entries) == content  # no split characters here


def test_without_logprobs_the_answer_has_none(client: openai.OpenAI) -> None:
    for logprobs in (None, False):
        extra: dict[str, Any] = {} if logprobs is None else {"logprobs": logprobs}
        completion = client.chat.completions.create(
            model="liv", messages=QUESTION, max_tokens=2, temperature=0, **extra
        )
        assert completion.choices[0].logprobs is None


def test_stream_chunks_carry_the_logprobs_of_their_delta(client: openai.OpenAI) -> None:
    # The stream is compared with a JSON answer below. Both must find the prompt in the KV cache
    # (all but its last token, which is computed alone): a prompt computed in one batch gives
    # logits that differ in the last bits from one computed token by token (llama.cpp's CPU
    # kernels differ by batch shape), which can flip a greedy near tie. This request caches it.
    client.chat.completions.create(model="liv", messages=STORY, max_tokens=1, temperature=0)
    stream = client.chat.completions.create(
        model="liv",
        messages=STORY,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    text: list[str] = []
    entries: list[ChatCompletionTokenLogprob] = []
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            # Every chunk with text carries the tokens that produced it.
            assert choice.logprobs is not None and choice.logprobs.content
        if choice.logprobs is not None and choice.logprobs.content:
            entries.extend(choice.logprobs.content)
        text.append(choice.delta.content or "")
    assert usage is not None and len(entries) == usage.completion_tokens == 12
    check_entries(entries, top=2)
    assert b"".join(bytes(entry.bytes or []) for entry in entries) == "".join(text).encode()
    # The same answer as the JSON one.
    completion = client.chat.completions.create(
        model="liv", messages=STORY, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2
    )
    assert completion.choices[0].message.content == "".join(text)
    answer = completion.choices[0].logprobs
    assert answer is not None and answer.content is not None
    assert [entry.token for entry in answer.content] == [entry.token for entry in entries]
    for json_entry, streamed in zip(answer.content, entries, strict=True):
        # Both reused the cached prompt: equal up to float noise.
        assert json_entry.logprob == pytest.approx(streamed.logprob, abs=1e-3)


def first_token(client: openai.OpenAI, **extra: Any) -> ChatCompletionTokenLogprob:
    completion = client.chat.completions.create(
        model="liv",
        messages=QUESTION,
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        **extra,
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == 1
    entry: ChatCompletionTokenLogprob = logprobs.content[0]
    return entry


@pytest.fixture(scope="module")
def token_id(stack: Stack) -> Iterator[Callable[[bytes], int]]:
    """The id of the one token of the stack's model whose text is the given bytes."""
    route = Catalogue.load(DEFAULT_CATALOGUE).routes["liv"]
    path = resolve_model_path(route.source, stack.models_dir)
    tokenizer = Llama(model_path=str(path), vocab_only=True, verbose=False)

    def lookup(text: bytes) -> int:
        [token] = tokenizer.tokenize(text, add_bos=False, special=False)
        assert token_piece(llama_cpp.llama_model_get_vocab(tokenizer.model), token) == text
        return int(token)

    yield lookup
    tokenizer.close()


def test_logit_bias_bans_the_greedy_token_or_forces_one(
    client: openai.OpenAI, token_id: Callable[[bytes], int]
) -> None:
    unbiased = first_token(client)
    banned = token_id(bytes(unbiased.bytes or []))
    biased = first_token(client, logit_bias={str(banned): -100})
    assert biased.token != unbiased.token
    assert biased.token == unbiased.top_logprobs[1].token  # the runner-up
    zebra = token_id(b" zebra")
    for temperature in (0, 1):
        completion = client.chat.completions.create(
            model="liv",
            messages=QUESTION,
            max_tokens=2,
            temperature=temperature,
            logit_bias={str(zebra): 100},
        )
        assert completion.choices[0].message.content == " zebra zebra"


def test_a_token_id_outside_the_vocabulary_is_a_400(client: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="liv",
                messages=QUESTION,
                max_tokens=2,
                logit_bias={"999999999": -100},
                stream=stream,
            )
        error = refused.value.body
        assert isinstance(error, dict)
        assert error["param"] == "logit_bias" and error["code"] == "invalid_value"
        assert refused.value.response.headers["x-transaction-id"]


def test_invalid_logprob_parameters_are_400s_naming_them(client: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"12": 101}}, "logit_bias"),
        ({"logit_bias": {"twelve": 1}}, "logit_bias"),
        ({"logit_bias": {str(token): 1 for token in range(301)}}, "logit_bias"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="liv", messages=QUESTION, max_tokens=2, **extra)
        error = refused.value.body
        assert isinstance(error, dict) and error["param"] == param, extra
