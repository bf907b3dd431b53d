"""Per-key limits set through the dashboard API are enforced for every gateway by billing and
answered like OpenAI's: 429 with the envelope, Retry-After and x-ratelimit-* headers, and the
openai SDK's RateLimitError. Another key of the same account is not affected."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from regio_devstack.stack import Stack
from tests.e2e.helpers import settled_balance, wait_until_key_known

# Requests of a burst must fall into one UTC minute (the window of requests_per_minute).
BURST_SECONDS = 12


@dataclass(frozen=True)
class Key:
    key_id: str
    secret: str
    client: openai.OpenAI


def new_key(stack: Stack, account_id: str) -> Key:
    created = stack.admin("POST", f"/admin/v1/accounts/{account_id}/keys")
    client = openai.OpenAI(
        base_url=stack.gateway_url + "/v1", api_key=created["key"], max_retries=0
    )
    wait_until_key_known(client)
    return Key(created["id"], created["key"], client)


def set_key_limits(stack: Stack, account_id: str, key: Key, **limits: Any) -> None:
    stack.admin("PUT", f"/admin/v1/accounts/{account_id}/keys/{key.key_id}/limits", limits)


def ask(key: Key, content: str = "Hi") -> Any:
    """One small completion; the raw response, so that its headers can be read."""
    return key.client.chat.completions.with_raw_response.create(
        model="liv", messages=[{"role": "user", "content": content}], max_tokens=1, temperature=0
    )


def start_of_a_fresh_minute_if_needed() -> None:
    into_minute = time.time() % 60
    if into_minute > 60 - BURST_SECONDS:
        time.sleep(60 - into_minute + 0.2)


def first_answer_under_the_limit(key: Key, limit: int) -> Any:
    """Config reaches the gateways within a second: until then requests carry no limit (and
    billing counts nothing for them). The first answer that names the limit was counted."""
    deadline = time.monotonic() + 5
    while True:
        answer = ask(key)
        if answer.headers.get("x-ratelimit-limit-requests") == str(limit):
            return answer
        assert time.monotonic() < deadline, "the key's limit did not reach the gateway"


def test_requests_per_minute_admits_exactly_the_limit(stack: Stack, new_customer: Any) -> None:
    customer = new_customer(credit_eur="1")
    limited, unlimited = new_key(stack, customer.account_id), new_key(stack, customer.account_id)
    limit, extra = 3, 3
    start_of_a_fresh_minute_if_needed()
    set_key_limits(stack, customer.account_id, limited, requests_per_minute=limit)

    first = first_answer_under_the_limit(limited, limit)
    assert first.headers["x-ratelimit-remaining-requests"] == str(limit - 1)
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    served, refused = 1, []
    for _ in range(limit - 1 + extra):
        try:
            answer = ask(limited)
        except openai.RateLimitError as refusal:
            refused.append(refusal)
            continue
        served += 1
        assert int(answer.headers["x-ratelimit-remaining-requests"]) == limit - served
    assert served == limit
    assert len(refused) == extra
    for error in refused:
        assert error.status_code == 429
        assert error.code == "rate_limit_exceeded"
        body = error.response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "requests"
        assert "requests per minute (RPM) on this API key: limit 3" in body["error"]["message"]
        headers = error.response.headers
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert headers["x-ratelimit-limit-requests"] == str(limit)
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-transaction-id"].startswith("txn-")

    # The other key of the account has no limit of its own and none of the account's.
    assert ask(unlimited).parse().choices[0].message.content is not None


def test_a_daily_spend_cap_refuses_once_reached(stack: Stack, new_customer: Any) -> None:
    customer = new_customer(credit_eur="1")
    capped, uncapped = new_key(stack, customer.account_id), new_key(stack, customer.account_id)
    # A prompt of ~100 tokens: its hold (a token per byte at most, ~9,200 nano-EUR) fits the
    # cap, but not once more on top of the first one's charge (~3,000 nano-EUR).
    prompt = "Hi " * 100
    set_key_limits(stack, customer.account_id, capped, daily_spend_cap_eur="0.00001")
    time.sleep(1.5)  # config changes reach the gateways within a second

    ask(capped, prompt)
    settled_balance(stack, customer.account_id)  # the first request is charged
    with pytest.raises(openai.RateLimitError) as caught:
        ask(capped, prompt)
    error = caught.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("spend", "rate_limit_exceeded")
    assert "daily spend cap of this API key is reached" in error["message"]
    # Until the UTC day ends.
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 86_400

    assert ask(uncapped).parse().choices[0].message.content is not None
