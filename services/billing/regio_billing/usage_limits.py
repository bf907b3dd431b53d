"""Pure rules of the usage limits of keys and accounts: which limit refuses a Reserve, and the
rate-limit headroom the gateway turns into OpenAI's `x-ratelimit-*` headers.

Windows are UTC: the minute, the day, the calendar month. Per scope (a key, an account):
- requests_per_minute: requests admitted (held) in the current minute; admit while < limit.
- tokens_per_minute: prompt + completion tokens settled in the current minute; admit while
  < limit (a request's tokens are known only once it is settled).
- max_concurrent_requests: open holds; admit while < limit.
- daily / monthly spend cap (nano-EUR): charged in the window + held now + this hold <= cap.
Scopes are checked key first, then account, and within a scope in the order above; the first
refusal wins. The counters come from PostgreSQL (limit_windows.py); nothing here does I/O."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

# A refused concurrent request may retry as soon as one of the open ones ends: a short back-off.
CONCURRENCY_RETRY_AFTER_MS = 1000


class LimitKind(enum.Enum):
    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    CONCURRENT_REQUESTS = "concurrent_requests"
    DAILY_SPEND = "daily_spend"
    MONTHLY_SPEND = "monthly_spend"


class ScopeKind(enum.Enum):
    KEY = "key"
    ACCOUNT = "account"


@dataclass(frozen=True)
class UsageLimits:
    """The limits of one scope; 0 means no limit (as on the wire)."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent_requests: int = 0
    daily_spend_cap_nano: int = 0
    monthly_spend_cap_nano: int = 0

    def is_empty(self) -> bool:
        return not any(
            (
                self.requests_per_minute,
                self.tokens_per_minute,
                self.max_concurrent_requests,
                self.daily_spend_cap_nano,
                self.monthly_spend_cap_nano,
            )
        )


@dataclass(frozen=True)
class ScopeUsage:
    """What a scope's windows and open holds account for right now."""

    requests_this_minute: int = 0
    tokens_this_minute: int = 0
    spent_today_nano: int = 0
    spent_this_month_nano: int = 0
    open_holds: int = 0
    held_nano: int = 0

    def with_holds(self, open_holds: int, held_nano: int) -> ScopeUsage:
        return replace(self, open_holds=open_holds, held_nano=held_nano)


@dataclass(frozen=True)
class LimitedScope:
    kind: ScopeKind
    name: str  # the usage_windows scope: "key:<id>" or "account:<id>"
    limits: UsageLimits
    usage: ScopeUsage

    def counted(self) -> LimitedScope:
        """The scope after this request was admitted and counted in its minute window."""
        if not self.limits.requests_per_minute:
            return self  # only scopes with a request limit count requests
        usage = replace(self.usage, requests_this_minute=self.usage.requests_this_minute + 1)
        return replace(self, usage=usage)


def key_scope(key_id: str) -> str:
    return f"key:{key_id}"


def account_scope(account_id: str) -> str:
    return f"account:{account_id}"


@dataclass(frozen=True)
class WindowClock:
    """The windows around one instant (the database's transaction time, shared by replicas)."""

    now: datetime

    def _ms_until(self, end: datetime) -> int:
        return max(1, math.ceil((end - self.now) / timedelta(milliseconds=1)))

    @property
    def _utc(self) -> datetime:
        return self.now.astimezone(UTC)

    def ms_to_minute_end(self) -> int:
        start = self._utc.replace(second=0, microsecond=0)
        return self._ms_until(start + timedelta(minutes=1))

    def ms_to_day_end(self) -> int:
        start = self._utc.replace(hour=0, minute=0, second=0, microsecond=0)
        return self._ms_until(start + timedelta(days=1))

    def ms_to_month_end(self) -> int:
        utc = self._utc
        year, month = (utc.year + 1, 1) if utc.month == 12 else (utc.year, utc.month + 1)
        return self._ms_until(datetime(year, month, 1, tzinfo=UTC))


@dataclass(frozen=True)
class LimitRefusal:
    kind: LimitKind
    scope: ScopeKind
    limit: int
    used: int
    retry_after_ms: int


@dataclass(frozen=True)
class Headroom:
    """The tightest request and token windows over the scopes; a limit of 0 means none."""

    limit_requests: int
    remaining_requests: int
    reset_requests_ms: int
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_ms: int


def first_refusal(
    scopes: Sequence[LimitedScope], amount_nano: int, clock: WindowClock
) -> LimitRefusal | None:
    """The first limit that refuses a new hold of `amount_nano`, or None to admit it."""
    for scope in scopes:
        refusal = _scope_refusal(scope, amount_nano, clock)
        if refusal is not None:
            return refusal
    return None


def _scope_refusal(
    scope: LimitedScope, amount_nano: int, clock: WindowClock
) -> LimitRefusal | None:
    limits, usage = scope.limits, scope.usage

    def refuse(kind: LimitKind, limit: int, used: int, retry_after_ms: int) -> LimitRefusal:
        return LimitRefusal(kind, scope.kind, limit, used, retry_after_ms)

    rpm = limits.requests_per_minute
    if rpm and usage.requests_this_minute >= rpm:
        return refuse(
            LimitKind.REQUESTS_PER_MINUTE, rpm, usage.requests_this_minute, clock.ms_to_minute_end()
        )
    tpm = limits.tokens_per_minute
    if tpm and usage.tokens_this_minute >= tpm:
        return refuse(
            LimitKind.TOKENS_PER_MINUTE, tpm, usage.tokens_this_minute, clock.ms_to_minute_end()
        )
    concurrent = limits.max_concurrent_requests
    if concurrent and usage.open_holds >= concurrent:
        return refuse(
            LimitKind.CONCURRENT_REQUESTS, concurrent, usage.open_holds, CONCURRENCY_RETRY_AFTER_MS
        )
    daily = limits.daily_spend_cap_nano
    spent_today = usage.spent_today_nano + usage.held_nano
    if daily and spent_today + amount_nano > daily:
        return refuse(LimitKind.DAILY_SPEND, daily, spent_today, clock.ms_to_day_end())
    monthly = limits.monthly_spend_cap_nano
    spent_this_month = usage.spent_this_month_nano + usage.held_nano
    if monthly and spent_this_month + amount_nano > monthly:
        return refuse(LimitKind.MONTHLY_SPEND, monthly, spent_this_month, clock.ms_to_month_end())
    return None


def headroom(scopes: Sequence[LimitedScope], clock: WindowClock) -> Headroom | None:
    """The request and token headroom of the tightest scope; None when no scope has a rate
    limit (then the gateway sends no `x-ratelimit-*` headers)."""
    requests = [
        (s.limits.requests_per_minute - s.usage.requests_this_minute, s.limits.requests_per_minute)
        for s in scopes
        if s.limits.requests_per_minute
    ]
    tokens = [
        (s.limits.tokens_per_minute - s.usage.tokens_this_minute, s.limits.tokens_per_minute)
        for s in scopes
        if s.limits.tokens_per_minute
    ]
    if not requests and not tokens:
        return None
    reset_ms = clock.ms_to_minute_end()
    remaining_requests, limit_requests = min(requests, default=(0, 0))
    remaining_tokens, limit_tokens = min(tokens, default=(0, 0))
    return Headroom(
        limit_requests=limit_requests,
        remaining_requests=max(0, remaining_requests),
        reset_requests_ms=reset_ms if limit_requests else 0,
        limit_tokens=limit_tokens,
        remaining_tokens=max(0, remaining_tokens),
        reset_tokens_ms=reset_ms if limit_tokens else 0,
    )
