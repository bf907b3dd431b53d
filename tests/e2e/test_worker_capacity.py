"""Admission through the gateway: the least loaded worker gets the request, a full region answers
503 with Retry-After at once (nothing charged), and streams decode together on one worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest

from regio_devstack.processes import ManagedProcess
from regio_devstack.stack import Stack
from tests.e2e.helpers import settled_balance

STORY: Any = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
HI: Any = [{"role": "user", "content": "Hi"}]


@contextmanager
def nl_workers(stack: Stack, count: int, **env: str) -> Iterator[list[ManagedProcess]]:
    workers = [stack.start_worker("liv", "nl", **env) for _ in range(count)]
    try:
        for worker in workers:
            stack.wait_for_worker(worker, "liv", "nl")
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def nl_client(customer: Any) -> openai.OpenAI:
    client: openai.OpenAI = customer.client.with_options(
        default_headers={"Host": "nl.localhost"}, max_retries=0
    )
    return client


def test_a_full_region_answers_503_with_retry_after_and_charges_nothing(
    stack: Stack, new_customer: Any
) -> None:
    customer = new_customer(credit_eur="1", regions=("nl",))
    client = nl_client(customer)
    with nl_workers(stack, 1, REGIO_WORKER_SLOTS="1", REGIO_WORKER_QUEUE_LIMIT="0"):
        running = client.chat.completions.create(
            model="liv", messages=STORY, max_tokens=150, stream=True
        )
        chunks = iter(running)
        next(chunks)  # the only slot is generating now
        started = time.perf_counter()
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="liv", messages=HI, max_tokens=1)
        refused_after = time.perf_counter() - started
        served = [chunk for chunk in chunks if chunk.usage is None]
        assert served  # the running stream was not disturbed
        after_busy = client.chat.completions.create(model="liv", messages=HI, max_tokens=1)
    error = caught.value
    assert error.status_code == 503
    assert error.response.headers["retry-after"] == "1"
    assert isinstance(error.body, dict) and error.body.get("code") == "capacity_exhausted"
    assert refused_after < 1.0  # a fast "busy", no waiting for a timeout
    assert after_busy.choices[0].finish_reason in ("stop", "length")
    # The refused request's hold was released: only the two served answers are charged.
    balance = settled_balance(stack, customer.account_id)
    assert balance["held_nano"] == 0


def test_concurrent_streams_spread_over_workers_and_batch_on_each(
    stack: Stack, new_customer: Any
) -> None:
    customer = new_customer(credit_eur="1", regions=("nl",))
    client = nl_client(customer)
    results: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            completion = client.chat.completions.create(model="liv", messages=STORY, max_tokens=40)
            results.append(completion.choices[0].finish_reason)
        except BaseException as error:  # reported below
            errors.append(error)

    # Two workers with two slots each and no queue: four simultaneous requests fit only if the
    # gateway spreads them by load and each worker decodes two streams at once.
    with nl_workers(stack, 2, REGIO_WORKER_SLOTS="2", REGIO_WORKER_QUEUE_LIMIT="0"):
        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert errors == []
    assert len(results) == 4 and set(results) <= {"length", "stop"}
