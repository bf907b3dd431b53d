"""The pure rules of usage limits: which limit refuses first, the headroom, the windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from regio_billing.usage_limits import (
    CONCURRENCY_RETRY_AFTER_MS,
    Headroom,
    LimitedScope,
    LimitKind,
    LimitRefusal,
    ScopeKind,
    ScopeUsage,
    UsageLimits,
    WindowClock,
    first_refusal,
    headroom,
)

# 12:34:56.250 UTC on the last day of a 31-day month.
CLOCK = WindowClock(datetime(2026, 12, 31, 12, 34, 56, 250_000, tzinfo=UTC))
MS_TO_MINUTE_END = 3_750


def key(limits: UsageLimits, usage: ScopeUsage | None = None) -> LimitedScope:
    return LimitedScope(ScopeKind.KEY, "key:k1", limits, usage or ScopeUsage())


def account(limits: UsageLimits, usage: ScopeUsage | None = None) -> LimitedScope:
    return LimitedScope(ScopeKind.ACCOUNT, "account:a1", limits, usage or ScopeUsage())


def test_window_ends_are_utc_minute_day_and_month() -> None:
    berlin = WindowClock(CLOCK.now.astimezone(timezone(timedelta(hours=1))))

    assert CLOCK.ms_to_minute_end() == MS_TO_MINUTE_END
    assert CLOCK.ms_to_day_end() == (11 * 3600 + 25 * 60 + 3) * 1000 + 750
    assert CLOCK.ms_to_month_end() == CLOCK.ms_to_day_end()  # December 31st: both end at 0:00
    assert berlin.ms_to_day_end() == CLOCK.ms_to_day_end()  # the caller's zone does not matter


def test_requests_below_the_limit_are_admitted_and_at_it_refused() -> None:
    limits = UsageLimits(requests_per_minute=10)

    below = first_refusal([key(limits, ScopeUsage(requests_this_minute=9))], 0, CLOCK)
    at = first_refusal([key(limits, ScopeUsage(requests_this_minute=10))], 0, CLOCK)

    assert below is None
    assert at == LimitRefusal(
        LimitKind.REQUESTS_PER_MINUTE, ScopeKind.KEY, 10, 10, MS_TO_MINUTE_END
    )


def test_a_spend_cap_counts_charges_holds_and_the_new_hold() -> None:
    limits = UsageLimits(daily_spend_cap_nano=1_000)
    usage = ScopeUsage(spent_today_nano=300, held_nano=200)

    fits = first_refusal([account(limits, usage)], 500, CLOCK)
    too_much = first_refusal([account(limits, usage)], 501, CLOCK)

    assert fits is None
    assert too_much == LimitRefusal(
        LimitKind.DAILY_SPEND, ScopeKind.ACCOUNT, 1_000, 500, CLOCK.ms_to_day_end()
    )


def test_the_key_is_checked_before_the_account_and_in_a_fixed_order() -> None:
    full_key = key(
        UsageLimits(max_concurrent_requests=1, monthly_spend_cap_nano=1),
        ScopeUsage(open_holds=1, spent_this_month_nano=5),
    )
    full_account = account(UsageLimits(tokens_per_minute=1), ScopeUsage(tokens_this_minute=1))

    refusal = first_refusal([full_key, full_account], 1, CLOCK)

    assert refusal == LimitRefusal(
        LimitKind.CONCURRENT_REQUESTS, ScopeKind.KEY, 1, 1, CONCURRENCY_RETRY_AFTER_MS
    )


def test_no_limit_means_no_refusal_and_no_headroom() -> None:
    busy = ScopeUsage(requests_this_minute=10**6, open_holds=10**6, spent_today_nano=10**12)

    assert first_refusal([key(UsageLimits(), busy)], 10**12, CLOCK) is None
    assert headroom([key(UsageLimits(), busy)], CLOCK) is None


def test_headroom_takes_the_tightest_scope_per_window() -> None:
    scopes = [
        key(UsageLimits(requests_per_minute=100), ScopeUsage(requests_this_minute=98)),
        account(
            UsageLimits(requests_per_minute=10, tokens_per_minute=5_000),
            ScopeUsage(requests_this_minute=3, tokens_this_minute=6_000),
        ),
    ]

    assert headroom(scopes, CLOCK) == Headroom(
        limit_requests=100,
        remaining_requests=2,
        reset_requests_ms=MS_TO_MINUTE_END,
        limit_tokens=5_000,
        remaining_tokens=0,
        reset_tokens_ms=MS_TO_MINUTE_END,
    )


def test_counting_a_request_uses_up_headroom_only_where_requests_are_limited() -> None:
    limited = key(UsageLimits(requests_per_minute=5), ScopeUsage(requests_this_minute=1))
    unlimited = account(UsageLimits(tokens_per_minute=5), ScopeUsage(requests_this_minute=1))

    assert limited.counted().usage.requests_this_minute == 2
    assert unlimited.counted() is unlimited
