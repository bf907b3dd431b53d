"""The ops listener: liveness, readiness with named checks, and the metrics exposition."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from regio_common.ops_server import NotReady, OpsServer, nats_check


class FakeNats:
    def __init__(self, connected: bool) -> None:
        self.is_connected = connected


@asynccontextmanager
async def _client(server: OpsServer) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    client = TestClient(TestServer(server.app()))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("regio_test_things", "Things.", registry=registry).inc(3)
    return registry


async def test_health_and_metrics(registry: CollectorRegistry) -> None:
    async with _client(OpsServer(registry)) as client:
        health = await client.get("/health")
        assert health.status == 200
        assert await health.json() == {"status": "ok"}
        metrics = await client.get("/metrics")
        assert metrics.status == 200
        assert metrics.headers["Content-Type"].startswith("text/plain")
        assert "regio_test_things_total 3.0" in await metrics.text()


async def test_ready_when_every_check_passes(registry: CollectorRegistry) -> None:
    async def database() -> None:
        return None

    server = OpsServer(registry, {"nats": nats_check(FakeNats(True)), "postgres": database})
    async with _client(server) as client:
        response = await client.get("/ready")
        assert response.status == 200
        assert await response.json() == {
            "status": "ready",
            "checks": {"nats": "ok", "postgres": "ok"},
        }


async def test_a_failing_check_gives_503_with_a_short_reason(registry: CollectorRegistry) -> None:
    async def database() -> None:
        raise ConnectionRefusedError(
            "connection to server at 127.0.0.1 refused\nTraceback (most recent call last): ..."
        )

    async def model() -> None:
        raise NotReady("model not loaded")

    server = OpsServer(
        registry,
        {"nats": nats_check(FakeNats(False)), "postgres": database, "model": model},
    )
    async with _client(server) as client:
        response = await client.get("/ready")
        assert response.status == 503
        body = await response.json()
        assert body == {
            "status": "not_ready",
            "checks": {
                "nats": "not connected",
                "postgres": "connection to server at 127.0.0.1 refused",
                "model": "model not loaded",
            },
        }
        # Liveness is independent of the dependencies.
        assert (await client.get("/health")).status == 200


async def test_a_hanging_check_times_out(registry: CollectorRegistry) -> None:
    async def hangs() -> None:
        await asyncio.sleep(60)

    server = OpsServer(registry, {"billing": hangs}, check_timeout_seconds=0.1)
    async with _client(server) as client:
        response = await client.get("/ready")
        assert response.status == 503
        assert (await response.json())["checks"] == {"billing": "no answer within 0.1s"}


async def test_a_check_added_later_is_run(registry: CollectorRegistry) -> None:
    server = OpsServer(registry)
    loaded = False

    async def model() -> None:
        if not loaded:
            raise NotReady("model not loaded")

    server.add_check("model", model)
    async with _client(server) as client:
        assert (await client.get("/ready")).status == 503
        loaded = True
        assert (await client.get("/ready")).status == 200


async def test_port_zero_switches_the_listener_off(registry: CollectorRegistry) -> None:
    server = OpsServer(registry)
    await server.start("127.0.0.1", 0)
    assert server.port is None
    await server.stop()


async def test_a_taken_port_is_logged_not_fatal(registry: CollectorRegistry) -> None:
    first = OpsServer(registry)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        await first.start("127.0.0.1", taken)
    assert first.port is None
    await first.stop()


async def test_listens_on_its_port(registry: CollectorRegistry) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = OpsServer(registry)
    await server.start("127.0.0.1", port)
    try:
        assert server.port == port
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health") as response,
        ):
            assert response.status == 200
    finally:
        await server.stop()
