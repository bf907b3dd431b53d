"""Residency: a region's requests are served only by workers in its countries; model aliases."""

from __future__ import annotations

from collections import Counter
from typing import Any

import openai
import pytest

from regio_devstack.stack import Stack
from tests.e2e.helpers import settled_balance

HI = [{"role": "user", "content": "Hi"}]


def test_each_region_is_served_only_from_its_countries(stack: Stack, new_customer: Any) -> None:
    customer = new_customer(credit_eur="1", regions=("eu", "de", "nl"))
    nl_worker = stack.start_worker("liv", "nl")
    try:
        stack.wait_for_worker(nl_worker, "liv", "nl")
        served: dict[str, Counter[str]] = {}
        for region in ("de", "nl", "eu"):
            client = customer.client.with_options(default_headers={"Host": f"{region}.localhost"})
            served[region] = Counter(
                client.chat.completions.with_raw_response.create(
                    model="liv",
                    messages=HI,
                    max_tokens=1,  # type: ignore[arg-type]
                ).headers["x-regio-country"]
                for _ in range(6)
            )
        assert served["de"] == Counter({"de": 6})
        assert served["nl"] == Counter({"nl": 6})
        assert set(served["eu"]) <= {"de", "nl"}
    finally:
        nl_worker.stop()


def test_a_provider_prefixed_base_model_names_its_route(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="google/gemma-3-270m",
        messages=HI,  # type: ignore[arg-type]
        max_tokens=2,
    )
    assert completion.model == "liv"  # the route that answered


def test_a_repeated_prompt_reports_cached_tokens(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Repeat after me: the tide comes in."}]
    client.chat.completions.create(model="liv", messages=messages, max_tokens=1)
    again = client.chat.completions.create(model="liv", messages=messages, max_tokens=1)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached is not None and 0 < cached <= again.usage.prompt_tokens


def test_the_models_fallback_list_reports_which_model_answered(
    stack: Stack, new_customer: Any
) -> None:
    customer = new_customer(credit_eur="1")
    before = settled_balance(stack, customer.account_id)
    raw = customer.client.chat.completions.with_raw_response.create(
        model="nonexistent",
        messages=HI,  # type: ignore[arg-type]
        max_tokens=2,
        extra_body={"models": ["also-missing", "liv"]},
    )
    completion = raw.parse()
    assert completion.model == "liv"
    assert completion.usage is not None
    after = settled_balance(stack, customer.account_id)
    assert before["balance_nano"] - after["balance_nano"] == (
        completion.usage.prompt_tokens * 29 + completion.usage.completion_tokens * 49
    )


def test_when_no_candidate_can_answer_the_first_error_is_returned(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="nonexistent",
            messages=HI,  # type: ignore[arg-type]
            extra_body={"models": ["also-missing"]},
        )
    assert caught.value.code == "model_not_found"
    assert "nonexistent" in caught.value.message
