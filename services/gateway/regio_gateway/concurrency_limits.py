"""Requests in flight at once: in the whole gateway process and per client address.

HTTP/1.1 connections are served one request at a time by aiohttp (pipelined requests wait), so
one connection never has more than one request in flight; these limits bound what many
connections can pin together. A streamed answer holds its slot until its last byte."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from aiohttp import web
from aiohttp.typedefs import Middleware

from regio_common.errors import ServiceUnavailable, TooManyRequests

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AddressOf = Callable[[web.Request], str]
# A slot frees as soon as one request ends: a short back-off is enough.
BUSY_RETRY_AFTER_SECONDS = 1
SERVER_BUSY = "server_busy"


class InFlightLimits:
    def __init__(self, total: int, per_client: int) -> None:
        self._total_limit = total
        self._per_client_limit = per_client
        self.total = 0
        self._by_client: dict[str, int] = {}

    def in_flight(self, address: str) -> int:
        return self._by_client.get(address, 0)

    @contextmanager
    def slot(self, address: str) -> Iterator[None]:
        """Holds one slot of the process and one of `address` for the duration, or raises."""
        if self.total >= self._total_limit:
            raise ServiceUnavailable(
                "The server is handling too many requests right now; please retry shortly.",
                code=SERVER_BUSY,
                retry_after_seconds=BUSY_RETRY_AFTER_SECONDS,
            )
        mine = self._by_client.get(address, 0)
        if mine >= self._per_client_limit:
            raise TooManyRequests(
                f"Too many concurrent requests from your address (at most "
                f"{self._per_client_limit}); please retry when one has finished.",
                retry_after_seconds=BUSY_RETRY_AFTER_SECONDS,
            )
        self.total += 1
        self._by_client[address] = mine + 1
        try:
            yield
        finally:
            self.total -= 1
            left = self._by_client[address] - 1
            if left:
                self._by_client[address] = left
            else:
                del self._by_client[address]


def concurrency_middleware(limits: InFlightLimits, address_of: AddressOf) -> Middleware:
    @web.middleware
    async def limit_in_flight(request: web.Request, handler: Handler) -> web.StreamResponse:
        with limits.slot(address_of(request)):
            return await handler(request)

    return limit_in_flight
