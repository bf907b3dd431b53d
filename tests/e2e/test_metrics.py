"""Operators see traffic, latency and tokens on the gateway's Prometheus endpoint."""

from __future__ import annotations

import contextlib
import re
import urllib.error
import urllib.request

import openai

from regio_devstack.stack import Stack


def scrape(stack: Stack) -> str:
    url = stack.ops_url("gateway") + "/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_requests_tokens_and_first_token_latency_are_counted(
    stack: Stack, client: openai.OpenAI
) -> None:
    before = scrape(stack)
    completion = client.chat.completions.create(
        model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert completion.usage is not None
    with contextlib.suppress(urllib.error.HTTPError):
        urllib.request.urlopen(stack.gateway_url + "/no/such/path", timeout=5)
    after = scrape(stack)

    requests = "regio_gateway_requests_total"
    ok = {"path": "/v1/chat/completions", "region": "eu", "status": "200"}
    assert sample(after, requests, **ok) == sample(before, requests, **ok) + 1
    unmatched = {"path": "unmatched", "region": "eu", "status": "404"}
    assert sample(after, requests, **unmatched) == sample(before, requests, **unmatched) + 1
    tokens = "regio_gateway_tokens_total"
    completion_tokens = {"kind": "completion", "model": "liv"}
    assert (
        sample(after, tokens, **completion_tokens) - sample(before, tokens, **completion_tokens)
        == completion.usage.completion_tokens
    )
    first_token = "regio_gateway_time_to_first_token_seconds_count"
    labels = {"model": "liv", "region": "eu"}
    assert sample(after, first_token, **labels) == sample(before, first_token, **labels) + 1
    # The public API port does not serve metrics.
    try:
        urllib.request.urlopen(stack.gateway_url + "/metrics", timeout=5)
        raise AssertionError("metrics must not be on the API port")
    except urllib.error.HTTPError as error:
        assert error.code == 404
