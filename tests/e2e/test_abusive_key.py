"""One abusive key hammers the gateway from a second process on loopback
(`python -m regio_devstack.load_client`), with `requests_per_minute` and
`max_concurrent_requests` set through the dashboard API: it gets at most its limit of answers in
its minute and a 429 with `Retry-After` for everything else, while another customer's small
sequential requests keep their median latency within 20 % of its unloaded value.

Phases: the other key's latency unloaded; then the load starts, the abusive key spends its
minute's quota (those requests are within its limit and legitimately use the worker; the test
waits for the first requests-per-minute refusal and a second for the admitted ones in flight),
the other key's latency is measured under the load that follows, every abusive request refused,
and the test stops the load (SIGTERM: the generator prints its summary). The load runs inside
one UTC minute, the window of `requests_per_minute`. Medians over 20 requests each; the
unloaded ones half before and half after the load, so that a drift of the machine's speed
evens out (other work on the machine still disturbs it: run it on an otherwise idle machine).

The load generator shares the machine's two cores with the platform (and llama.cpp uses both):
its rate is bounded (15 requests/s, 90 times what the key may send) so that what is measured
is the gateway's cost of refusing, not the generator's own CPU use."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import openai

from regio_devstack.stack import Stack

REQUESTS_PER_MINUTE = 10
MAX_CONCURRENT = 2
# The most the load may last (the test stops it when its measurement is done): it has to fit
# into one UTC minute.
LOAD_SECONDS = 24.0
LOAD_CONCURRENCY = 8
LOAD_RATE = 15.0  # requests per second: 90 times what the key may send
LOAD_MAX_REQUESTS = 5000
SAMPLES = 20  # of the other key under load; unloaded: half before the load, half after it
# For the abusive key's admitted requests still in flight (at most 2) to finish.
SETTLE_SECONDS = 1.0
# The abusive key spends its quota within this (about 2 s on an idle machine).
QUOTA_SPENT_WITHIN_SECONDS = 12.0
TOLERANCE = 1.2


@dataclass
class AbusiveProbes:
    """The test's own requests with the abusive key, by UTC minute of sending."""

    served_by_minute: dict[str, int] = field(default_factory=dict)

    def ask(self, client: openai.OpenAI) -> Any:
        minute = utc_minute(time.time())
        try:
            answer = client.chat.completions.with_raw_response.create(
                model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=1
            )
        except openai.RateLimitError as refusal:
            return refusal
        self.served_by_minute[minute] = self.served_by_minute.get(minute, 0) + 1
        return answer


def utc_minute(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%MZ")


def limited_key(stack: Stack, account_id: str) -> str:
    keys = stack.admin("GET", f"/admin/v1/accounts/{account_id}/keys")["data"]
    key_id: str = keys[0]["id"]
    stack.admin(
        "PUT",
        f"/admin/v1/accounts/{account_id}/keys/{key_id}/limits",
        {
            "requests_per_minute": REQUESTS_PER_MINUTE,
            "tokens_per_minute": None,
            "max_concurrent_requests": MAX_CONCURRENT,
            "daily_spend_cap_eur": None,
            "monthly_spend_cap_eur": None,
        },
    )
    return key_id


def wait_for_the_limit(client: openai.OpenAI, probes: AbusiveProbes) -> None:
    """Config reaches the gateway within about a second; the first answer naming the limit
    shows it arrived."""
    deadline = time.monotonic() + 10
    while True:
        answer = probes.ask(client)
        if getattr(answer, "headers", {}).get("x-ratelimit-limit-requests") == str(
            REQUESTS_PER_MINUTE
        ):
            return
        assert time.monotonic() < deadline, "the key's limits did not reach the gateway"
        time.sleep(0.2)


def latencies(client: openai.OpenAI, count: int) -> list[float]:
    measured = []
    for _ in range(count):
        started = time.perf_counter()
        completion = client.chat.completions.create(
            model="liv",
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8,
            temperature=0,
        )
        measured.append(time.perf_counter() - started)
        assert completion.choices[0].message.content is not None
    return measured


def start_in_one_minute(seconds: float) -> None:
    """Waits for the next UTC minute unless `seconds` still fit into this one."""
    into_minute = time.time() % 60
    if into_minute + seconds > 59:
        time.sleep(60 - into_minute + 0.2)


def start_load(stack: Stack, key: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "regio_devstack.load_client",
            "--url",
            stack.gateway_url,
            "--key",
            key,
            "--concurrency",
            str(LOAD_CONCURRENCY),
            "--duration",
            str(LOAD_SECONDS),
            "--max-requests",
            str(LOAD_MAX_REQUESTS),
            "--rate",
            str(LOAD_RATE),
            "--max-tokens",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_until_throttled(client: openai.OpenAI, probes: AbusiveProbes) -> float:
    """Until the abusive key meets its requests-per-minute limit; returns the seconds taken."""
    started = time.monotonic()
    while True:
        answer = probes.ask(client)
        if isinstance(answer, openai.RateLimitError) and answer.type == "requests":
            return time.monotonic() - started
        assert time.monotonic() - started < QUOTA_SPENT_WITHIN_SECONDS, "not throttled in time"
        time.sleep(0.2)


def test_an_abusive_key_is_throttled_and_another_keys_latency_holds(
    stack: Stack, new_customer: Any
) -> None:
    benign = new_customer(credit_eur="1")
    abusive = new_customer(credit_eur="1")
    limited_key(stack, abusive.account_id)
    probes = AbusiveProbes()
    wait_for_the_limit(abusive.client, probes)
    latencies(benign.client, 1)  # warm: the first request of a prompt fills the worker's cache

    unloaded = latencies(benign.client, SAMPLES // 2)
    start_in_one_minute(LOAD_SECONDS + 1)
    window = utc_minute(time.time())
    load = start_load(stack, abusive.api_key)
    try:
        throttled_after = wait_until_throttled(abusive.client, probes)
        time.sleep(SETTLE_SECONDS)
        loaded = latencies(benign.client, SAMPLES)
        assert load.poll() is None, "the load ended before the measurement did"
        load.send_signal(signal.SIGTERM)  # it stops sending and prints its summary
        output, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    summary = json.loads(output)
    unloaded += latencies(benign.client, SAMPLES - SAMPLES // 2)

    unloaded_p50, loaded_p50 = statistics.median(unloaded), statistics.median(loaded)
    served_in_window = summary["ok_by_utc_minute"].get(window, 0)
    print(
        f"\nabusive key (limit {REQUESTS_PER_MINUTE}/min, {MAX_CONCURRENT} concurrent):"
        f" {summary['requests']} requests in {summary['elapsed_seconds']} s"
        f" ({summary['requests_per_second']} req/s), by status {summary['by_status']},"
        f" 429 with Retry-After {summary['rate_limited_with_retry_after']}"
        f" (by type {summary['rate_limited_by_type']}),"
        f" latency ms {summary['latency_ms']}; quota spent after {throttled_after:.1f} s"
        f"\nother key p50: unloaded {unloaded_p50 * 1000:.0f} ms,"
        f" under load {loaded_p50 * 1000:.0f} ms ({loaded_p50 / unloaded_p50:.2f}x)"
    )
    assert set(summary["by_status"]) <= {"200", "429"}, summary["by_status"]
    assert summary["errors_without_envelope"] == 0
    assert set(summary["rate_limited_by_type"]) <= {"requests", "concurrency"}
    assert summary["rate_limited_with_retry_after"] == summary["by_status"].get("429", 0)
    assert list(summary["ok_by_utc_minute"]) == [window]
    assert 1 <= served_in_window + probes.served_by_minute.get(window, 0) <= REQUESTS_PER_MINUTE
    assert summary["by_status"]["429"] >= 5 * REQUESTS_PER_MINUTE  # it was hammering
    assert loaded_p50 <= TOLERANCE * unloaded_p50
