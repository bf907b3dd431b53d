"""Remembers billing's recent limit refusals, so that a key over its limit is refused at the
gateway without a billing call (and a PostgreSQL transaction) per request.

Per gateway process. Exact for requests and tokens per minute: until the minute ends, the
counters of the refused window only grow (admitted requests, settled tokens). A spend cap can
free up before its day or month ends (in-flight holds settle below their amount; a smaller
max_tokens holds less), so a spend refusal is trusted only for a few seconds before billing is
asked again. Concurrency refusals are never remembered: a slot frees at any moment. A change of
the limits (through the dashboard) forgets the refusals made under the old ones."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from regio.billing.v1 import billing_pb2
from regio_common.config_records import ApiKeyRecord, UsageLimits
from regio_gateway.rate_limits import LimitRefusal

# How long a spend refusal is believed without asking billing again.
SPEND_REFUSAL_MEMORY_SECONDS = 5.0
_WINDOW_KINDS = (
    billing_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE,
    billing_pb2.LIMIT_KIND_TOKENS_PER_MINUTE,
)
_SPEND_KINDS = (billing_pb2.LIMIT_KIND_DAILY_SPEND, billing_pb2.LIMIT_KIND_MONTHLY_SPEND)
_SCOPES = (billing_pb2.LIMIT_SCOPE_KEY, billing_pb2.LIMIT_SCOPE_ACCOUNT)
# Expired entries are swept when the table reaches this size (then twice its live size).
_FIRST_SWEEP_AT = 1024

_Slot = tuple[int, str, int]  # (scope, key id or account id, kind)


@dataclass(frozen=True)
class _Refusal:
    limit: billing_pb2.LimitExceeded
    headroom: billing_pb2.RateLimitHeadroom
    limits: UsageLimits  # of the refused scope, when billing refused
    at: float
    refused_until: float  # the window's reset: what Retry-After counts down to
    trusted_until: float  # afterwards billing is asked again


class LimitDenyCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._refusals: dict[_Slot, _Refusal] = {}
        self._sweep_at = _FIRST_SWEEP_AT

    def remember(
        self, refusal: LimitRefusal, key: ApiKeyRecord, account_limits: UsageLimits
    ) -> None:
        limit = refusal.limit
        if limit.kind not in _WINDOW_KINDS + _SPEND_KINDS or limit.scope not in _SCOPES:
            return
        now = self._clock()
        refused_until = now + refusal.retry_after_ms / 1000
        trusted_until = refused_until
        if limit.kind in _SPEND_KINDS:
            trusted_until = min(refused_until, now + SPEND_REFUSAL_MEMORY_SECONDS)
        by_key = limit.scope == billing_pb2.LIMIT_SCOPE_KEY
        owner = key.key_id if by_key else key.account_id
        self._refusals[(limit.scope, owner, limit.kind)] = _Refusal(
            limit=limit,
            headroom=refusal.headroom,
            limits=key.limits if by_key else account_limits,
            at=now,
            refused_until=refused_until,
            trusted_until=trusted_until,
        )
        if len(self._refusals) >= self._sweep_at:
            self._sweep(now)

    def refusal_for(self, key: ApiKeyRecord, account_limits: UsageLimits) -> LimitRefusal | None:
        """The refusal still in force for this key or its account, rebuilt with the time left."""
        now = self._clock()
        scopes = (
            (billing_pb2.LIMIT_SCOPE_KEY, key.key_id, key.limits),
            (billing_pb2.LIMIT_SCOPE_ACCOUNT, key.account_id, account_limits),
        )
        for scope, owner, limits in scopes:
            for kind in _WINDOW_KINDS + _SPEND_KINDS:
                slot = (scope, owner, kind)
                remembered = self._refusals.get(slot)
                if remembered is None:
                    continue
                if now >= remembered.trusted_until or remembered.limits != limits:
                    del self._refusals[slot]
                    continue
                return _replay(remembered, now)
        return None

    def _sweep(self, now: float) -> None:
        expired = [slot for slot, r in self._refusals.items() if now >= r.trusted_until]
        for slot in expired:
            del self._refusals[slot]
        self._sweep_at = max(_FIRST_SWEEP_AT, 2 * len(self._refusals))


def _replay(remembered: _Refusal, now: float) -> LimitRefusal:
    elapsed_ms = math.floor((now - remembered.at) * 1000)
    headroom = billing_pb2.RateLimitHeadroom()
    headroom.CopyFrom(remembered.headroom)
    headroom.reset_requests_ms = max(0, headroom.reset_requests_ms - elapsed_ms)
    headroom.reset_tokens_ms = max(0, headroom.reset_tokens_ms - elapsed_ms)
    wait_ms = max(1, math.ceil((remembered.refused_until - now) * 1000))
    return LimitRefusal(remembered.limit, headroom, retry_after_ms=wait_ms)
