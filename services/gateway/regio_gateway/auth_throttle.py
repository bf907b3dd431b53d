"""Failed-auth throttling per client address, so that guessing keys is slow and visible.

In memory, per gateway process (each replica counts the failures it sees): more than N failed
key checks from one address within its one-minute window and every request of that address is
answered 429 until the window ends, before any key is looked at."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from regio_common.errors import ClientError, TooManyRequests
from regio_gateway.auth import is_authentication_failure
from regio_gateway.metrics import GatewayMetrics

log = structlog.get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AddressOf = Callable[[web.Request], str]
WINDOW_SECONDS = 60.0
# Addresses tracked at once before expired windows are swept (then twice the live count).
_FIRST_SWEEP_AT = 4096


@dataclass
class _Window:
    started: float
    failures: int


class FailedAuthThrottle:
    def __init__(self, failures_per_minute: int, clock: Callable[[], float] = time.monotonic):
        self._allowed = failures_per_minute
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._sweep_at = _FIRST_SWEEP_AT

    def blocked_seconds(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None when it is not throttled."""
        now = self._clock()
        window = self._current(address, now)
        if window is None or window.failures <= self._allowed:
            return None
        return max(1, math.ceil(window.started + WINDOW_SECONDS - now))

    def record_failure(self, address: str) -> int:
        """Counts one failed key check; returns the failures of the address in its window."""
        now = self._clock()
        window = self._current(address, now)
        if window is None:
            window = self._windows[address] = _Window(started=now, failures=0)
            if len(self._windows) >= self._sweep_at:
                self._sweep(now)
        window.failures += 1
        return window.failures

    @property
    def allowed(self) -> int:
        return self._allowed

    def _current(self, address: str, now: float) -> _Window | None:
        window = self._windows.get(address)
        if window is not None and now >= window.started + WINDOW_SECONDS:
            del self._windows[address]
            return None
        return window

    def _sweep(self, now: float) -> None:
        expired = [a for a, w in self._windows.items() if now >= w.started + WINDOW_SECONDS]
        for address in expired:
            del self._windows[address]
        self._sweep_at = max(_FIRST_SWEEP_AT, 2 * len(self._windows))


def auth_throttle_middleware(
    throttle: FailedAuthThrottle, address_of: AddressOf, metrics: GatewayMetrics
) -> Middleware:
    @web.middleware
    async def throttle_failed_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = address_of(request)
        wait = throttle.blocked_seconds(address)
        if wait is not None:
            raise TooManyRequests(
                "Too many failed authentication attempts from your address. "
                f"Please try again in {wait}s.",
                retry_after_seconds=wait,
            )
        try:
            return await handler(request)
        except ClientError as error:
            if is_authentication_failure(error):
                metrics.auth_failed()
                failures = throttle.record_failure(address)
                # Bounded: at most the allowed failures and one throttling line per address and
                # minute. The address only: never the presented key.
                if failures <= throttle.allowed:
                    log.warning("auth_failed", client_address=address, failures=failures)
                elif failures == throttle.allowed + 1:
                    log.warning(
                        "auth_throttled",
                        client_address=address,
                        failures=failures,
                        retry_after_seconds=throttle.blocked_seconds(address),
                    )
            raise

    return throttle_failed_auth
