"""Context overflow: a conversation longer than the route's context (8,192 tokens for `liv`) is
answered with messages left out of its middle (middle-out), says so in the
`x-regio-context-compressed` header, and is billed for the prompt really used; `transforms: []`
turns that off and gets the 400 `context_length_exceeded`.

The conversation's oldest round after the first user turn is long (about 9,000 tokens) and the
recent ones are short: middle-out leaves out exactly that round, so the prompt the model reads
is short and the test fast."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from regio_devstack.stack import Stack
from tests.e2e.helpers import settled_balance

CONTEXT_LENGTH = 8192  # route `liv` in config/catalogue.dev.toml
HEADER = "x-regio-context-compressed"
LIV_INPUT_NANO_PER_TOKEN = 29
LIV_OUTPUT_NANO_PER_TOKEN = 49
FILLER = "The weather report lists clouds, rain and wind for every town. " * 350  # ~4,550 tokens

SYSTEM: ChatCompletionMessageParam = {"role": "system", "content": "Answer in one sentence."}
FIRST: ChatCompletionMessageParam = {"role": "user", "content": "My name is Ada."}
OLD_ROUND: list[ChatCompletionMessageParam] = [
    {"role": "assistant", "content": FILLER},
    {"role": "user", "content": FILLER},
]


def recent_rounds(count: int) -> list[ChatCompletionMessageParam]:
    rounds: list[ChatCompletionMessageParam] = []
    for number in range(count):
        rounds.append({"role": "assistant", "content": f"Noted fact {number}."})
        rounds.append({"role": "user", "content": f"Fact {number}: I like the number {number}."})
    return rounds


RECENT = recent_rounds(6)
LAST: list[ChatCompletionMessageParam] = [
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "What is my name?"},
]
CONVERSATION = [SYSTEM, FIRST, *OLD_ROUND, *RECENT, *LAST]
KEPT = [SYSTEM, FIRST, *RECENT, *LAST]  # what middle-out leaves of it


def test_a_conversation_longer_than_the_context_is_answered_and_billed_as_compressed(
    stack: Stack, new_customer: Any
) -> None:
    customer = new_customer(credit_eur="1")
    # The activation's free system prompt is kept too, and still not billed.
    stack.admin(
        "PUT",
        f"/admin/v1/accounts/{customer.account_id}/activations/liv/eu",
        {"free_system_prompt": "You are the assistant of the Regio demo."},
    )
    time.sleep(1.0)  # the activation change reaches the gateway through NATS KV
    before = settled_balance(stack, customer.account_id)
    raw = customer.client.chat.completions.with_raw_response.create(
        model="liv", messages=CONVERSATION, max_tokens=8, temperature=0
    )
    completion = raw.parse()
    assert raw.headers[HEADER] == str(len(OLD_ROUND))
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert 0 < completion.usage.prompt_tokens < CONTEXT_LENGTH
    after = settled_balance(stack, customer.account_id)
    assert before["balance_nano"] - after["balance_nano"] == (
        completion.usage.prompt_tokens * LIV_INPUT_NANO_PER_TOKEN
        + completion.usage.completion_tokens * LIV_OUTPUT_NANO_PER_TOKEN
    )

    # Billed for exactly the prompt of the conversation without its old round.
    kept = customer.client.chat.completions.with_raw_response.create(
        model="liv", messages=KEPT, max_tokens=8, temperature=0
    )
    assert HEADER not in kept.headers
    kept_usage = kept.parse().usage
    assert kept_usage is not None
    assert kept_usage.prompt_tokens == completion.usage.prompt_tokens

    # The worker logs the compression with counts only, never the conversation's text.
    line = compression_log_line(stack, raw.headers["x-transaction-id"])
    assert line["dropped_messages"] == len(OLD_ROUND)
    assert line["kept_messages"] == len(KEPT)
    assert line["prompt_tokens"] < CONTEXT_LENGTH < line["prompt_tokens_before"]
    assert not any(word in json.dumps(line) for word in ("Ada", "weather", "Noted", "Fact"))


def compression_log_line(stack: Stack, transaction_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        for path in stack.config.data_dir.rglob("worker-*.log"):
            for text in path.read_text().splitlines():
                if transaction_id in text and "context_compressed" in text:
                    line: dict[str, Any] = json.loads(text)
                    return line
        assert time.monotonic() < deadline, "no context_compressed line in the worker's log"
        time.sleep(0.1)


def test_a_streamed_answer_carries_the_header_before_its_first_chunk(
    client: openai.OpenAI,
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="liv",
        messages=CONVERSATION,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"transforms": ["middle-out"]},  # the default, said explicitly
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers[HEADER] == str(len(OLD_ROUND))
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.prompt_tokens < CONTEXT_LENGTH
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


@pytest.mark.parametrize("stream", [False, True])
def test_transforms_empty_turns_compression_off(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        answer = client.chat.completions.create(
            model="liv",
            messages=CONVERSATION,
            max_tokens=8,
            stream=stream,
            extra_body={"transforms": []},
        )
        if isinstance(answer, openai.Stream):
            list(answer)  # the 400 comes before the stream's first byte, this is not reached
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"


def test_a_last_turn_alone_longer_than_the_context_is_still_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="liv",
            messages=[*CONVERSATION[:-1], {"role": "user", "content": FILLER * 2}],
            max_tokens=8,
        )
    assert caught.value.code == "context_length_exceeded"
