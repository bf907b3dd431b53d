"""Usage limits of keys and accounts as the client sees them: the 429 refusal with an OpenAI-like
message, and OpenAI's `x-ratelimit-*` headers.

Billing decides (atomically with the hold, on counters every gateway replica shares); this module
only words its answer."""

from __future__ import annotations

import math
from decimal import Decimal

from regio.billing.v1 import billing_pb2
from regio_common.config_records import UsageLimits
from regio_common.errors import RateLimited
from regio_common.money import nano_to_eur

# Kinds whose refusal says "requests" / "tokens": their `type`, and OpenAI's wording.
_RATE_KINDS: dict[int, tuple[str, str]] = {
    billing_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE: ("requests", "requests per minute (RPM)"),
    billing_pb2.LIMIT_KIND_TOKENS_PER_MINUTE: ("tokens", "tokens per minute (TPM)"),
}
_SPEND_KINDS: dict[int, tuple[str, str]] = {
    billing_pb2.LIMIT_KIND_DAILY_SPEND: ("daily", "today"),
    billing_pb2.LIMIT_KIND_MONTHLY_SPEND: ("monthly", "this month"),
}
_SCOPES = {
    billing_pb2.LIMIT_SCOPE_KEY: "this API key",
    billing_pb2.LIMIT_SCOPE_ACCOUNT: "this account",
}


def format_duration(milliseconds: int) -> str:
    """A duration the way OpenAI's headers and messages write it (Go's notation): `250ms`,
    `1s`, `1.5s`, `6m0s`, `1h2m3s`."""
    if milliseconds <= 0:
        return "0s"
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, fraction = divmod(rest, 1000)
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    text += str(seconds)
    if fraction:
        text += f".{fraction:03d}".rstrip("0")
    return text + "s"


def rate_limit_headers(headroom: billing_pb2.RateLimitHeadroom) -> dict[str, str]:
    """OpenAI's headers for each window that has a limit (a limit of 0 means none)."""
    headers: dict[str, str] = {}
    if headroom.limit_requests:
        headers["x-ratelimit-limit-requests"] = str(headroom.limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(headroom.remaining_requests)
        headers["x-ratelimit-reset-requests"] = format_duration(headroom.reset_requests_ms)
    if headroom.limit_tokens:
        headers["x-ratelimit-limit-tokens"] = str(headroom.limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(headroom.remaining_tokens)
        headers["x-ratelimit-reset-tokens"] = format_duration(headroom.reset_tokens_ms)
    return headers


def exhausted_headroom(
    limit: billing_pb2.LimitExceeded,
    headroom: billing_pb2.RateLimitHeadroom | None,
    retry_after_ms: int,
) -> billing_pb2.RateLimitHeadroom:
    """The headroom to show with a refusal: the refused window has nothing left until it resets
    (also when billing sent no headroom, or an older one is replayed from the deny cache)."""
    shown = billing_pb2.RateLimitHeadroom()
    if headroom is not None:
        shown.CopyFrom(headroom)
    if limit.kind == billing_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE:
        shown.limit_requests = shown.limit_requests or int(limit.limit)
        shown.remaining_requests = 0
        shown.reset_requests_ms = retry_after_ms
    elif limit.kind == billing_pb2.LIMIT_KIND_TOKENS_PER_MINUTE:
        shown.limit_tokens = shown.limit_tokens or int(limit.limit)
        shown.remaining_tokens = 0
        shown.reset_tokens_ms = retry_after_ms
    return shown


def limits_to_proto(limits: UsageLimits) -> billing_pb2.UsageLimits:
    """The wire form: 0 stands for "no limit"."""
    return billing_pb2.UsageLimits(
        requests_per_minute=limits.requests_per_minute or 0,
        tokens_per_minute=limits.tokens_per_minute or 0,
        max_concurrent_requests=limits.max_concurrent_requests or 0,
        daily_spend_cap_nano=limits.daily_spend_cap_nano or 0,
        monthly_spend_cap_nano=limits.monthly_spend_cap_nano or 0,
    )


def _eur(nano: int) -> str:
    eur = nano_to_eur(nano)
    cents = eur.quantize(Decimal("0.01"))
    return f"€{cents}" if cents == eur else f"€{eur.normalize():f}"


def limit_type(kind: int) -> str:
    """The envelope's `type`: what ran out."""
    if kind in _RATE_KINDS:
        return _RATE_KINDS[kind][0]
    if kind == billing_pb2.LIMIT_KIND_CONCURRENT_REQUESTS:
        return "concurrency"
    return "spend"


def refusal_message(limit: billing_pb2.LimitExceeded, retry_after_ms: int) -> str:
    scope = _SCOPES.get(limit.scope, "this API key")
    wait = f"Please try again in {format_duration(retry_after_ms)}."
    if limit.kind in _RATE_KINDS:
        what = _RATE_KINDS[limit.kind][1]
        return (
            f"Rate limit reached for {what} on {scope}: limit {limit.limit}, used {limit.used}. "
            + wait
        )
    if limit.kind == billing_pb2.LIMIT_KIND_CONCURRENT_REQUESTS:
        return (
            f"Too many concurrent requests on {scope}: limit {limit.limit}, in flight "
            f"{limit.used}. " + wait
        )
    period, window = _SPEND_KINDS.get(limit.kind, ("daily", "today"))
    return (
        f"The {period} spend cap of {scope} is reached: cap {_eur(limit.limit)}, spent or held "
        f"{window} {_eur(limit.used)}, and this request could cost more than what is left. "
        f"{wait[:-1]}, or lower max_tokens."
    )


class LimitRefusal(RateLimited):
    """Billing refused a Reserve for a limit of the key or account (429 `rate_limit_exceeded`).

    Carries what billing said, for the deny cache and the response's headers."""

    def __init__(
        self,
        limit: billing_pb2.LimitExceeded,
        headroom: billing_pb2.RateLimitHeadroom | None,
        retry_after_ms: int | None = None,
    ) -> None:
        wait_ms = limit.retry_after_ms if retry_after_ms is None else retry_after_ms
        super().__init__(
            refusal_message(limit, wait_ms),
            limit_type=limit_type(limit.kind),
            # Never 0: a client told "retry after 0 s" would hammer the gateway.
            retry_after_seconds=max(1, math.ceil(wait_ms / 1000)),
        )
        self.limit = limit
        self.headroom = exhausted_headroom(limit, headroom, wait_ms)
        self.retry_after_ms = wait_ms
