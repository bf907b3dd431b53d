"""Failed-auth throttling: an address that keeps presenting bad keys is slowed down to 429 for
the rest of its minute, before any key check; others are not affected."""

from __future__ import annotations

import aiohttp
from structlog.testing import capture_logs

from regio_gateway.auth_throttle import WINDOW_SECONDS, FailedAuthThrottle
from tests.unit.gateway.fake_gateway import API_KEY, bearer, running_gateway


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_more_failures_than_allowed_block_the_address_until_its_window_ends() -> None:
    clock = Clock()
    throttle = FailedAuthThrottle(failures_per_minute=3, clock=clock)
    for _ in range(3):
        throttle.record_failure("198.51.100.1")
        assert throttle.blocked_seconds("198.51.100.1") is None
    clock.now += 10
    throttle.record_failure("198.51.100.1")
    assert throttle.blocked_seconds("198.51.100.1") == 50
    assert throttle.blocked_seconds("198.51.100.2") is None

    clock.now += 49.5
    assert throttle.blocked_seconds("198.51.100.1") == 1  # rounded up, never 0
    clock.now += 0.5
    assert throttle.blocked_seconds("198.51.100.1") is None
    throttle.record_failure("198.51.100.1")  # a new window starts from scratch
    assert throttle.blocked_seconds("198.51.100.1") is None


def test_failures_spread_over_windows_never_block() -> None:
    clock = Clock()
    throttle = FailedAuthThrottle(failures_per_minute=2, clock=clock)
    for _ in range(5):
        throttle.record_failure("198.51.100.1")
        throttle.record_failure("198.51.100.1")
        clock.now += WINDOW_SECONDS
        assert throttle.blocked_seconds("198.51.100.1") is None


async def test_the_gateway_answers_429_to_a_guessing_address_even_with_a_good_key() -> None:
    async with running_gateway(auth_failures_per_minute=3, trusted_proxy_hops=1) as gateway:
        guesser = {"X-Forwarded-For": "198.51.100.7"}
        async with aiohttp.ClientSession(gateway.url) as http:
            with capture_logs() as logs:
                for attempt in range(4):
                    key = f"rg-guess-{attempt}"
                    async with http.get("/v1/models", headers=bearer(key, **guesser)) as answer:
                        assert answer.status == 403
                async with http.get("/v1/models", headers=guesser) as answer:  # no key at all
                    assert answer.status == 429  # the 4th failure crossed the limit
            async with http.get("/v1/models", headers=bearer(API_KEY, **guesser)) as answer:
                assert answer.status == 429
                body = await answer.json()
                assert body["error"]["code"] == "too_many_requests"
                assert body["error"]["type"] == "rate_limit_error"
                assert 1 <= int(answer.headers["Retry-After"]) <= 60
                assert answer.headers["x-transaction-id"].startswith("txn-")
            # Another client of the same gateway is served.
            other = bearer(API_KEY, **{"X-Forwarded-For": "198.51.100.8"})
            async with http.get("/v1/models", headers=other) as answer:
                assert answer.status == 200

    registry = gateway.metrics.registry
    assert registry.get_sample_value("regio_gateway_auth_failures_total") == 4
    throttled = [line for line in logs if line["event"] == "auth_throttled"]
    assert [line["client_address"] for line in throttled] == ["198.51.100.7"]
    assert len([line for line in logs if line["event"] == "auth_failed"]) == 3
    assert "rg-guess" not in repr(logs)  # the address is logged, never a presented key
    throttled_answers = registry.get_sample_value(
        "regio_gateway_refusals_total", {"reason": "too_many_requests"}
    )
    assert throttled_answers == 2
