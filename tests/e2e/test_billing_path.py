"""Every request is billed exactly the price of the tokens it reports, and only then."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from regio_devstack.stack import Stack
from tests.e2e.helpers import settled_balance

# Route `liv`: €0.029 per 1M input tokens = 29 nano-EUR per token; €0.049 per 1M output = 49.
LIV_INPUT_NANO_PER_TOKEN = 29
LIV_OUTPUT_NANO_PER_TOKEN = 49


def test_balance_goes_down_by_exactly_the_price_of_the_reported_tokens(
    stack: Stack, new_customer: Any
) -> None:
    customer = new_customer(credit_eur="1")
    before = settled_balance(stack, customer.account_id)
    assert before["balance_nano"] == 1_000_000_000

    completion = customer.client.chat.completions.create(
        model="liv", messages=[{"role": "user", "content": "Say hello."}], max_tokens=10
    )
    assert completion.usage is not None
    after = settled_balance(stack, customer.account_id)
    price = (
        completion.usage.prompt_tokens * LIV_INPUT_NANO_PER_TOKEN
        + completion.usage.completion_tokens * LIV_OUTPUT_NANO_PER_TOKEN
    )
    assert before["balance_nano"] - after["balance_nano"] == price


def test_streamed_request_is_billed_like_a_plain_one(stack: Stack, new_customer: Any) -> None:
    customer = new_customer(credit_eur="1")
    before = settled_balance(stack, customer.account_id)
    stream = customer.client.chat.completions.create(
        model="liv",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    after = settled_balance(stack, customer.account_id)
    price = (
        usage.prompt_tokens * LIV_INPUT_NANO_PER_TOKEN
        + usage.completion_tokens * LIV_OUTPUT_NANO_PER_TOKEN
    )
    assert before["balance_nano"] - after["balance_nano"] == price


def test_free_system_prompt_is_not_billed(stack: Stack, new_customer: Any) -> None:
    customer = new_customer(credit_eur="1")
    messages = [{"role": "user", "content": "Say hello."}]
    plain = customer.client.chat.completions.create(
        model="liv", messages=messages, max_tokens=1, temperature=0
    )
    stack.admin(
        "PUT",
        f"/admin/v1/accounts/{customer.account_id}/activations/liv/eu",
        {"free_system_prompt": "You are a friendly assistant of the Regio demo. " * 10},
    )
    time.sleep(1.0)  # the activation change reaches the gateway through NATS KV
    before = settled_balance(stack, customer.account_id)
    with_free_prompt = customer.client.chat.completions.create(
        model="liv", messages=messages, max_tokens=1, temperature=0
    )
    assert plain.usage is not None and with_free_prompt.usage is not None
    assert with_free_prompt.usage.prompt_tokens == plain.usage.prompt_tokens
    after = settled_balance(stack, customer.account_id)
    assert before["balance_nano"] - after["balance_nano"] == (
        with_free_prompt.usage.prompt_tokens * LIV_INPUT_NANO_PER_TOKEN
        + with_free_prompt.usage.completion_tokens * LIV_OUTPUT_NANO_PER_TOKEN
    )


def test_insufficient_credit_is_403_and_costs_nothing(stack: Stack, new_customer: Any) -> None:
    customer = new_customer(credit_eur="0.000001")  # 1,000 nano-EUR: not even 30 output tokens
    with pytest.raises(openai.PermissionDeniedError) as caught:
        customer.client.chat.completions.create(
            model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=100
        )
    assert caught.value.code == "insufficient_budget"
    balance = settled_balance(stack, customer.account_id)
    assert balance["balance_nano"] == 1_000


def test_prompt_longer_than_the_context_is_400_and_free(stack: Stack, new_customer: Any) -> None:
    customer = new_customer(credit_eur="1")
    before = settled_balance(stack, customer.account_id)
    with pytest.raises(openai.BadRequestError) as caught:
        customer.client.chat.completions.create(
            model="liv",
            messages=[{"role": "user", "content": "sea " * 12_000}],  # > 8,192 tokens
            max_tokens=5,
        )
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    after = settled_balance(stack, customer.account_id)
    assert after["balance_nano"] == before["balance_nano"]
