"""Prometheus metrics of the gateway, on their own registry, served by the ops listener (never
on the public API port).

Label values come from closed sets only (route patterns, catalogue regions and routes, fixed
reasons), never from raw client input, so a client cannot create new series."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

from regio_common.errors import (
    BillingUnavailable,
    ClientError,
    InsufficientBudget,
    ModelNotFound,
    RateLimited,
    RegioError,
    RegionMismatch,
    ServiceUnavailable,
    TooManyRequests,
)
from regio_gateway.auth import is_authentication_failure
from regio_gateway.concurrency_limits import SERVER_BUSY
from regio_gateway.handlers.body import RequestTimeout

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RegionOf = Callable[[web.Request], str]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REFUSAL_REASONS = (
    "invalid_request",
    "authentication",
    "insufficient_budget",
    "model_not_found",
    "region_mismatch",
    "no_worker",
    "rate_limit_exceeded",  # a limit of the key or account (requests, tokens, spend, ...)
    "too_many_requests",  # edge protections: failed-auth throttling, per-client concurrency
    "server_busy",  # the gateway process is at its concurrency limit
    "request_timeout",  # the body did not arrive in time
    "upstream_error",
)
DEPENDENCIES = ("nats", "billing")


def refusal_reason(error: RegioError | web.HTTPException) -> str:
    """The contract's reason for an error answered to a client."""
    if isinstance(error, web.HTTPException):  # unknown URL, wrong method, ...
        return "invalid_request" if error.status < 500 else "upstream_error"
    if is_authentication_failure(error):
        return "authentication"
    if isinstance(error, InsufficientBudget):
        return "insufficient_budget"
    if isinstance(error, ModelNotFound):
        return "model_not_found"
    if isinstance(error, RegionMismatch):
        return "region_mismatch"
    if isinstance(error, RateLimited):
        return "rate_limit_exceeded"
    if isinstance(error, TooManyRequests):
        return "too_many_requests"
    if isinstance(error, RequestTimeout):
        return "request_timeout"
    if error.code == SERVER_BUSY:
        return "server_busy"
    if isinstance(error, ClientError):
        return "invalid_request"
    if isinstance(error, ServiceUnavailable) and not isinstance(error, BillingUnavailable):
        return "no_worker"
    return "upstream_error"  # billing down, worker failed or went silent


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "regio_gateway_requests",
            "HTTP requests answered, by route pattern, endpoint region and status.",
            ["path", "region", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "regio_gateway_request_duration_seconds",
            "Time to answer a request (to the last byte for streams).",
            ["path", "region"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "regio_gateway_time_to_first_token_seconds",
            "From the request's arrival to its first generated text.",
            ["model", "region"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "regio_gateway_tokens",
            "Billed tokens served, by model and kind (prompt, completion).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "regio_gateway_refusals",
            "Requests refused or failed with an error answer, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "regio_gateway_auth_failures",
            "Failed key checks (missing, unknown or revoked keys); per client address in the "
            "gateway's log, never here.",
            registry=self.registry,
        )
        self.dependency_errors = Counter(
            "regio_gateway_dependency_errors",
            "Failed calls to a dependency (nats, billing).",
            ["dependency"],
            registry=self.registry,
        )
        # Every series exists from the start, so that rate() and alerts see a zero, not nothing.
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)
        for dependency in DEPENDENCIES:
            self.dependency_errors.labels(dependency)

    def observe_usage(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)

    def observe_first_token(self, model: str, region: str, seconds: float) -> None:
        self.first_token_seconds.labels(model, region).observe(seconds)

    def refused(self, error: RegioError | web.HTTPException) -> None:
        self.refusals.labels(refusal_reason(error)).inc()

    def auth_failed(self) -> None:
        self.auth_failures.inc()

    def dependency_failed(self, dependency: str) -> None:
        self.dependency_errors.labels(dependency).inc()

    def middleware(self, region_of: RegionOf) -> Middleware:
        """Requests and latency; outermost, so that it sees the rendered error responses."""

        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            # The route pattern, not the raw path: unknown URLs must not create new series.
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else "unmatched"
            region = region_of(request)
            response = await handler(request)
            self.requests.labels(path, region, str(response.status)).inc()
            self.request_seconds.labels(path, region).observe(time.perf_counter() - started)
            return response

        return measure

    def refusal_middleware(self) -> Middleware:
        """Refusals by reason; innermost (inside the error rendering), so that it sees the
        error itself. Only the error a client receives counts: a fallback model that failed
        before another one answered is not a refusal."""

        @web.middleware
        async def count_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                return await handler(request)
            except (RegioError, web.HTTPException) as error:
                if not (isinstance(error, web.HTTPException) and error.status < 400):
                    self.refused(error)
                raise

        return count_refusals
