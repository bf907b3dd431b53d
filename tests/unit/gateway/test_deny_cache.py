"""The gateway remembers billing's limit refusals, so that a key over its limit costs no
billing call until its window resets."""

from __future__ import annotations

from regio.billing.v1 import billing_pb2
from regio_common.config_records import ApiKeyRecord, UsageLimits
from regio_gateway.deny_cache import SPEND_REFUSAL_MEMORY_SECONDS, LimitDenyCache
from regio_gateway.rate_limits import LimitRefusal, rate_limit_headers

RPM = billing_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE
KEY_SCOPE = billing_pb2.LIMIT_SCOPE_KEY
ACCOUNT_SCOPE = billing_pb2.LIMIT_SCOPE_ACCOUNT
NO_LIMITS = UsageLimits()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(key_id: str = "k1", account_id: str = "a1", rpm: int | None = 10) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=key_id, account_id=account_id, limits=UsageLimits(requests_per_minute=rpm)
    )


def refusal(
    kind: billing_pb2.LimitKind.ValueType = RPM,
    scope: billing_pb2.LimitScope.ValueType = KEY_SCOPE,
    retry_after_ms: int = 20_000,
) -> LimitRefusal:
    headroom = billing_pb2.RateLimitHeadroom(
        limit_requests=10, remaining_requests=0, reset_requests_ms=retry_after_ms
    )
    exceeded = billing_pb2.LimitExceeded(
        kind=kind, scope=scope, limit=10, used=10, retry_after_ms=retry_after_ms
    )
    return LimitRefusal(exceeded, headroom)


def test_a_requests_refusal_holds_until_its_window_resets_with_the_time_left() -> None:
    clock = Clock()
    cache = LimitDenyCache(clock)
    assert cache.refusal_for(key(), NO_LIMITS) is None
    cache.remember(refusal(retry_after_ms=20_000), key(), NO_LIMITS)

    clock.now += 5.5
    again = cache.refusal_for(key(), NO_LIMITS)
    assert again is not None
    assert again.retry_after_seconds == 15
    assert "Please try again in 14.5s." in again.message
    assert rate_limit_headers(again.headroom)["x-ratelimit-remaining-requests"] == "0"
    assert rate_limit_headers(again.headroom)["x-ratelimit-reset-requests"] == "14.5s"

    clock.now += 14.5
    assert cache.refusal_for(key(), NO_LIMITS) is None


def test_a_key_refusal_does_not_touch_other_keys_but_an_account_refusal_does() -> None:
    cache = LimitDenyCache(Clock())
    cache.remember(refusal(scope=KEY_SCOPE), key("k1"), NO_LIMITS)
    assert cache.refusal_for(key("k2"), NO_LIMITS) is None

    account_limits = UsageLimits(requests_per_minute=10)
    cache.remember(refusal(scope=ACCOUNT_SCOPE), key("k1"), account_limits)
    assert cache.refusal_for(key("k2"), account_limits) is not None
    assert cache.refusal_for(key("k3", account_id="a2"), account_limits) is None


def test_a_change_of_the_limits_forgets_the_refusal() -> None:
    cache = LimitDenyCache(Clock())
    cache.remember(refusal(), key(rpm=10), NO_LIMITS)
    assert cache.refusal_for(key(rpm=20), NO_LIMITS) is None
    assert cache.refusal_for(key(rpm=10), NO_LIMITS) is None  # forgotten, not just skipped


def test_spend_refusals_are_believed_briefly_and_concurrency_ones_not_at_all() -> None:
    clock = Clock()
    cache = LimitDenyCache(clock)
    cache.remember(refusal(kind=billing_pb2.LIMIT_KIND_CONCURRENT_REQUESTS), key(), NO_LIMITS)
    assert cache.refusal_for(key(), NO_LIMITS) is None

    daily = refusal(kind=billing_pb2.LIMIT_KIND_DAILY_SPEND, retry_after_ms=3_600_000)
    cache.remember(daily, key(), NO_LIMITS)
    replayed = cache.refusal_for(key(), NO_LIMITS)
    # While believed, the answer still tells when the cap resets.
    assert replayed is not None and replayed.retry_after_seconds == 3600
    clock.now += SPEND_REFUSAL_MEMORY_SECONDS
    assert cache.refusal_for(key(), NO_LIMITS) is None
