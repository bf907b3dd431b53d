"""Prometheus metrics of the gateway, on their own registry and their own port (never on the
public API port)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "regio_gateway_requests",
            "HTTP requests answered, by route pattern and status.",
            ["path", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "regio_gateway_request_duration_seconds",
            "Time to answer a request (to the last byte for streams).",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "regio_gateway_time_to_first_token_seconds",
            "From the request's arrival to its first generated text.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "regio_gateway_tokens",
            "Billed tokens served, by model and kind (prompt, completion).",
            ["model", "kind"],
            registry=self.registry,
        )

    def observe_usage(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)

    def middleware(self) -> Middleware:
        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            # The route pattern, not the raw path: unknown URLs must not create new series.
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else "unmatched"
            response = await handler(request)
            self.requests.labels(path, str(response.status)).inc()
            self.request_seconds.labels(path).observe(time.perf_counter() - started)
            return response

        return measure

    async def handle_scrape(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    def scrape_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.handle_scrape)
        return app
