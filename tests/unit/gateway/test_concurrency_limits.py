"""Requests in flight at once: a client address beyond its share gets 429, the whole process
beyond its limit answers 503 `server_busy`; slots free when requests end."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from regio_common.errors import ServiceUnavailable, TooManyRequests
from regio_gateway.concurrency_limits import InFlightLimits
from tests.unit.gateway.fake_gateway import bearer, chat_body, running_gateway, wait_until


def test_slots_are_counted_per_address_and_in_total_and_given_back() -> None:
    limits = InFlightLimits(total=2, per_client=1)
    with limits.slot("a"):
        with pytest.raises(TooManyRequests), limits.slot("a"):
            pass
        with limits.slot("b"):
            with pytest.raises(ServiceUnavailable) as caught, limits.slot("c"):
                pass
            assert caught.value.code == "server_busy"
            assert caught.value.retry_after_seconds == 1
    assert limits.total == 0 and limits.in_flight("a") == 0
    with limits.slot("c"):  # all free again
        assert limits.in_flight("c") == 1


async def test_the_gateway_refuses_what_is_beyond_the_in_flight_limits() -> None:
    async with running_gateway(
        max_concurrent_requests=2, max_concurrent_requests_per_client=1, trusted_proxy_hops=1
    ) as gateway:
        gate = gateway.dispatcher.gate = asyncio.Event()
        async with aiohttp.ClientSession(gateway.url) as http:

            async def post(address: str) -> tuple[int, dict[str, Any], str | None]:
                headers = bearer(**{"X-Forwarded-For": address})
                async with http.post(
                    "/v1/chat/completions", json=chat_body(), headers=headers
                ) as r:
                    return r.status, await r.json(), r.headers.get("Retry-After")

            first = asyncio.create_task(post("198.51.100.1"))
            await wait_until(lambda: gateway.state.in_flight.total == 1)
            status, body, retry_after = await post("198.51.100.1")
            assert (status, body["error"]["code"], retry_after) == (429, "too_many_requests", "1")

            second = asyncio.create_task(post("198.51.100.2"))
            await wait_until(lambda: gateway.state.in_flight.total == 2)
            status, body, retry_after = await post("198.51.100.3")
            assert (status, body["error"]["code"], retry_after) == (503, "server_busy", "1")

            gate.set()
            assert [(await first)[0], (await second)[0]] == [200, 200]
            assert (await post("198.51.100.1"))[0] == 200
    registry = gateway.metrics.registry
    for reason in ("too_many_requests", "server_busy"):
        count = registry.get_sample_value("regio_gateway_refusals_total", {"reason": reason})
        assert count == 1
