"""JSON mode through the gateway with the official SDK: grammar-constrained output that parses,
a schema that is followed, and an answer cut before it is valid JSON that is not charged."""

from __future__ import annotations

import json
from typing import Any, cast

import openai
import pytest

from regio_devstack.stack import Stack
from tests.e2e.helpers import settled_balance

YES: Any = [
    {
        "role": "user",
        "content": 'Reply with a JSON object with the key "answer" and the value "yes".',
    }
]
LIV_PRICE_NANO = (29, 49)  # per token: €0.029 / €0.049 per 1M tokens


def test_json_object_mode_returns_json_and_bills_it(stack: Stack, new_customer: Any) -> None:
    customer = new_customer(credit_eur="1")
    before = settled_balance(stack, customer.account_id)
    completion = customer.client.chat.completions.create(
        model="liv",
        messages=YES,
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_object"},
    )
    content = completion.choices[0].message.content
    assert content is not None and isinstance(json.loads(content), dict)
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    after = settled_balance(stack, customer.account_id)
    assert before["balance_nano"] - after["balance_nano"] == (
        usage.prompt_tokens * LIV_PRICE_NANO[0] + usage.completion_tokens * LIV_PRICE_NANO[1]
    )


def test_json_schema_mode_follows_the_schema_when_streamed(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}, "rank": {"type": "integer"}},
        "required": ["city", "rank"],
        "additionalProperties": False,
    }
    stream = client.chat.completions.create(
        model="liv",
        messages=[{"role": "user", "content": "Name the largest city of France and its rank."}],
        max_tokens=120,
        temperature=0,
        stream=True,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    answer = json.loads(text)
    assert set(answer) == {"city", "rank"}
    assert isinstance(answer["city"], str) and isinstance(answer["rank"], int)


def test_json_cut_short_by_max_tokens_is_not_charged(stack: Stack, new_customer: Any) -> None:
    customer = new_customer(credit_eur="1")
    before = settled_balance(stack, customer.account_id)
    completion = customer.client.chat.completions.create(
        model="liv",
        messages=YES,
        max_tokens=3,
        temperature=0,
        # The schema requires a key with a string value: no 3 tokens can close such an object
        # (a bare json_object could close as `{}` if the model preferred it).
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "string"}},
                    "required": ["answer"],
                },
            },
        },
    )
    assert completion.choices[0].finish_reason == "length"
    content = completion.choices[0].message.content or ""
    with pytest.raises(ValueError):
        json.loads(content)
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    after = settled_balance(stack, customer.account_id)
    assert after["balance_nano"] == before["balance_nano"]


def test_a_malformed_response_format_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="liv",
            messages=YES,
            max_tokens=5,
            response_format=cast(Any, {"type": "json_schema"}),  # no schema given
        )
    body = caught.value.body
    assert isinstance(body, dict) and body.get("param", "").startswith("response_format")
