"""How a limit refusal and the rate-limit headroom read to a client: OpenAI's wording, headers
and durations."""

from __future__ import annotations

import pytest

from regio.billing.v1 import billing_pb2
from regio_common.config_records import UsageLimits
from regio_gateway.rate_limits import (
    LimitRefusal,
    format_duration,
    limits_to_proto,
    rate_limit_headers,
)

KEY = billing_pb2.LIMIT_SCOPE_KEY
ACCOUNT = billing_pb2.LIMIT_SCOPE_ACCOUNT


@pytest.mark.parametrize(
    ("milliseconds", "text"),
    [
        (0, "0s"),
        (250, "250ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (21_000, "21s"),
        (60_000, "1m0s"),
        (360_000, "6m0s"),
        (90_250, "1m30.25s"),
        (3_723_004, "1h2m3.004s"),
    ],
)
def test_durations_are_written_like_openai_does(milliseconds: int, text: str) -> None:
    assert format_duration(milliseconds) == text


def test_headers_appear_for_the_windows_that_have_a_limit() -> None:
    both = billing_pb2.RateLimitHeadroom(
        limit_requests=10,
        remaining_requests=9,
        reset_requests_ms=6000,
        limit_tokens=1000,
        remaining_tokens=400,
        reset_tokens_ms=360_000,
    )
    assert rate_limit_headers(both) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    requests_only = billing_pb2.RateLimitHeadroom(
        limit_requests=5, remaining_requests=0, reset_requests_ms=250
    )
    assert set(rate_limit_headers(requests_only)) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert rate_limit_headers(billing_pb2.RateLimitHeadroom()) == {}


def _refusal(
    kind: billing_pb2.LimitKind.ValueType,
    scope: billing_pb2.LimitScope.ValueType,
    limit: int,
    used: int,
    retry_after_ms: int,
) -> LimitRefusal:
    exceeded = billing_pb2.LimitExceeded(
        kind=kind, scope=scope, limit=limit, used=used, retry_after_ms=retry_after_ms
    )
    return LimitRefusal(exceeded, None)


def test_a_requests_per_minute_refusal_reads_like_openais() -> None:
    refusal = _refusal(billing_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE, KEY, 10, 10, 20_100)
    assert refusal.message == (
        "Rate limit reached for requests per minute (RPM) on this API key: limit 10, used 10. "
        "Please try again in 20.1s."
    )
    assert refusal.status == 429
    assert refusal.retry_after_seconds == 21  # rounded up: retrying earlier is refused again
    assert refusal.envelope()["error"] == {
        "message": refusal.message,
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    # The refused window shows nothing left, even without a headroom from billing.
    assert rate_limit_headers(refusal.headroom) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "20.1s",
    }


def test_each_kind_names_its_limit_scope_and_type() -> None:
    tokens = _refusal(billing_pb2.LIMIT_KIND_TOKENS_PER_MINUTE, ACCOUNT, 1000, 1200, 5000)
    assert "tokens per minute (TPM) on this account: limit 1000, used 1200" in tokens.message
    assert tokens.limit_type == "tokens"

    concurrent = _refusal(billing_pb2.LIMIT_KIND_CONCURRENT_REQUESTS, KEY, 2, 2, 1000)
    assert concurrent.message.startswith("Too many concurrent requests on this API key: limit 2")
    assert concurrent.limit_type == "concurrency"
    assert concurrent.retry_after_seconds == 1

    daily = _refusal(billing_pb2.LIMIT_KIND_DAILY_SPEND, KEY, 10**9, 999_000_000, 3_600_000)
    assert daily.message.startswith(
        "The daily spend cap of this API key is reached: cap €1.00, spent or held today €0.999"
    )
    assert "Please try again in 1h0m0s, or lower max_tokens." in daily.message
    assert daily.limit_type == "spend"
    assert daily.retry_after_seconds == 3600

    monthly = _refusal(billing_pb2.LIMIT_KIND_MONTHLY_SPEND, ACCOUNT, 5 * 10**9, 5 * 10**9, 10)
    assert "monthly spend cap of this account is reached: cap €5.00" in monthly.message
    assert monthly.retry_after_seconds == 1  # never 0


def test_limits_go_on_the_wire_with_0_for_none() -> None:
    wire = limits_to_proto(UsageLimits(requests_per_minute=10, daily_spend_cap_nano=7))
    assert wire == billing_pb2.UsageLimits(requests_per_minute=10, daily_spend_cap_nano=7)
    assert limits_to_proto(UsageLimits()) == billing_pb2.UsageLimits()
