"""Prometheus metrics of the dashboard API, on their own registry, served by the ops listener
(never on the API port). `path` is the route pattern (`/admin/v1/accounts/{account_id}`), never
the raw path, so ids do not create series."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import psycopg
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class DashboardMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "regio_dashboard_requests",
            "HTTP requests answered, by route pattern and status.",
            ["path", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "regio_dashboard_request_duration_seconds",
            "Time to answer a request.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.database_errors = Counter(
            "regio_dashboard_database_errors",
            "PostgreSQL errors that ended a request (answered 500 or 503).",
            registry=self.registry,
        )

    def around(self, error_middleware: Middleware) -> list[Middleware]:
        """The app's middlewares with `error_middleware` (which renders errors) wrapped:
        requests are counted outside it, to see the rendered status; database errors inside
        it, where the exception is still visible."""
        return [self._measure_requests(), error_middleware, self._count_database_errors()]

    def _measure_requests(self) -> Middleware:
        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else "unmatched"
            response = await handler(request)
            self.requests.labels(path, str(response.status)).inc()
            self.request_seconds.labels(path).observe(time.perf_counter() - started)
            return response

        return measure

    def _count_database_errors(self) -> Middleware:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                return await handler(request)
            except psycopg.Error:
                self.database_errors.inc()
                raise

        return count
