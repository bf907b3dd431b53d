"""The operations listener every service runs on its own port (never the public one):

- `GET /health`  liveness: 200 while the process's event loop answers;
- `GET /ready`   readiness: runs the service's named dependency checks side by side, each with
  a short timeout; 503 names the failing ones with a short reason (never a stack trace);
- `GET /metrics` Prometheus exposition of the service's own `CollectorRegistry`.

A check is an async callable that returns when the dependency is usable and raises otherwise
(`NotReady("model not loaded")` for a plain reason)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = structlog.get_logger()

ReadinessCheck = Callable[[], Awaitable[None]]

DEFAULT_CHECK_TIMEOUT_SECONDS = 2.0
MAX_REASON_CHARS = 200
OK = "ok"


class NotReady(Exception):
    """Raised by a readiness check; its message is the reason shown on /ready."""


def short_reason(error: BaseException) -> str:
    """One line, bounded: what /ready shows for a failed check (internals stay in the log)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    reason = text or type(error).__name__
    return reason[:MAX_REASON_CHARS]


class ConnectionState(Protocol):
    """What a NATS client tells about its link (nats.aio.client.Client)."""

    @property
    def is_connected(self) -> bool: ...


class ConnectionPool(Protocol):
    """A psycopg_pool.AsyncConnectionPool, as far as a readiness check uses it."""

    def connection(self, timeout: float | None = None) -> AbstractAsyncContextManager[Any]: ...


def nats_check(client: ConnectionState) -> ReadinessCheck:
    async def check() -> None:
        if not client.is_connected:
            raise NotReady("not connected")

    return check


def postgres_check(pool: ConnectionPool, timeout_seconds: float) -> ReadinessCheck:
    """`SELECT 1` through the service's own pool (an exhausted pool is not ready either)."""

    async def check() -> None:
        async with pool.connection(timeout=timeout_seconds) as conn:
            await conn.execute("SELECT 1")

    return check


class OpsServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        checks: Mapping[str, ReadinessCheck] | None = None,
        *,
        check_timeout_seconds: float = DEFAULT_CHECK_TIMEOUT_SECONDS,
    ) -> None:
        self.registry = registry
        self._checks: dict[str, ReadinessCheck] = dict(checks or {})
        self._timeout = check_timeout_seconds
        self._runner: web.AppRunner | None = None
        self._was_ready: bool | None = None
        self.port: int | None = None  # the port really listened on, once started

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self._checks[name] = check

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port; port 0 means the listener is switched off.

        A port already taken is logged as an error, not fatal: the service itself still works
        (under Kubernetes the failing probes make the problem visible)."""
        if not port:
            log.info("ops_listener_disabled")
            return
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            log.error("ops_listener_failed", host=host, port=port, error=str(error))
            return
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = port
        log.info("ops_listener_started", host=host, port=port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def check_all(self) -> dict[str, str]:
        """Every check's result: "ok" or a short reason."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._run_check(self._checks[name]) for name in names))
        return dict(zip(names, results, strict=True))

    async def _run_check(self, check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), self._timeout)
        except TimeoutError:
            return f"no answer within {self._timeout:g}s"
        except Exception as error:
            return short_reason(error)
        return OK

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        checks = await self.check_all()
        ready = all(result == OK for result in checks.values())
        if ready != self._was_ready:  # log the changes, not every probe
            (log.info if ready else log.warning)("readiness_changed", ready=ready, checks=checks)
            self._was_ready = ready
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
