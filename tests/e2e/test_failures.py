"""Dead dependencies: a clear 503 in bounded time, and no credit lost or charged."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from regio_devstack.stack import Stack
from tests.e2e.helpers import settled_balance


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_stopped_worker_gives_503_quickly_and_releases_the_hold(
    stack: Stack, new_customer: Any, how: str
) -> None:
    customer = new_customer(credit_eur="1", regions=("nl",))
    worker = stack.start_worker("liv", "nl")
    stack.wait_for_worker(worker, "liv", "nl")
    # The endpoint's region comes from the Host header (nl.<domain> serves region nl).
    nl_client = customer.client.with_options(default_headers={"Host": "nl.localhost"})
    answer = nl_client.chat.completions.create(
        model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert answer.choices[0].message.content is not None
    before = settled_balance(stack, customer.account_id)

    if how == "sigterm":
        worker.stop()  # drains: its last heartbeat says so
    else:
        assert worker.process is not None
        worker.process.kill()  # no goodbye: NATS notices the closed connection
        worker.process.wait()
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        nl_client.chat.completions.create(
            model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert caught.value.status_code == 503
    assert time.monotonic() - started < 10
    after = settled_balance(stack, customer.account_id)
    assert after["balance_nano"] == before["balance_nano"]


def test_billing_unreachable_gives_503_and_serves_nothing(
    stack: Stack, client: openai.OpenAI
) -> None:
    billing = next(p for p in stack.services if p.name == "billing")
    billing.stop()
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(
                model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        assert caught.value.status_code == 503
        assert "billing" in str(caught.value.message).lower()
    finally:
        billing.start()
        billing.wait_until(
            lambda: _billing_answers(client), timeout=30, what="billing back in service"
        )


def _billing_answers(client: openai.OpenAI) -> bool:
    client.chat.completions.create(
        model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=1
    )
    return True
