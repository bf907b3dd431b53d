"""Prometheus metrics of a worker, on their own registry, served by the ops listener.

`route` is the one catalogue route the worker serves (a closed set, from its settings)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from regio_worker.engine.base import FinishReason

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SPEED_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)
OUTCOMES = ("completed", "cancelled", "failed", "rejected")


def outcome_of(finish_reason: FinishReason) -> str:
    if finish_reason == FinishReason.CANCELLED:
        return "cancelled"
    if finish_reason == FinishReason.ERROR:
        return "failed"
    return "completed"  # stop or length


class WorkerMetrics:
    def __init__(self, route: str) -> None:
        self.route = route
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "regio_worker_requests",
            "Requests answered, by outcome (completed, cancelled, failed, rejected).",
            ["route", "outcome"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "regio_worker_generated_tokens",
            "Completion tokens generated.",
            ["route"],
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "regio_worker_tokens_per_second",
            "Decode speed of each request: completion tokens after the first one, per second "
            "from the first to the last.",
            ["route"],
            buckets=SPEED_BUCKETS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "regio_worker_time_to_first_token_seconds",
            "From a request's acceptance (queueing included) to its first generated text.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_length = Gauge(
            "regio_worker_queue_length",
            "Accepted requests waiting for a free slot.",
            ["route"],
            registry=self.registry,
        )
        self.free_slots = Gauge(
            "regio_worker_free_slots",
            "Generation slots not in use.",
            ["route"],
            registry=self.registry,
        )
        self.nats_errors = Counter(
            "regio_worker_nats_errors",
            "NATS publishes that failed (chunks, heartbeats).",
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.requests.labels(route, outcome)
        self.generated_tokens.labels(route)

    def request_done(self, outcome: str) -> None:
        self.requests.labels(self.route, outcome).inc()

    def generation_finished(
        self,
        finish_reason: FinishReason,
        completion_tokens: int,
        first_text_seconds: float | None,
        decode_seconds: float | None,
    ) -> None:
        """One request's generation is over: its outcome, tokens, first-token time and speed."""
        self.request_done(outcome_of(finish_reason))
        self.generated_tokens.labels(self.route).inc(completion_tokens)
        if first_text_seconds is not None:
            self.first_token_seconds.labels(self.route).observe(first_text_seconds)
        # The first token's time belongs to the prompt; speed needs at least two tokens.
        if decode_seconds is not None and decode_seconds > 0 and completion_tokens > 1:
            speed = (completion_tokens - 1) / decode_seconds
            self.tokens_per_second.labels(self.route).observe(speed)

    def load_changed(self, queued: int, free_slots: int) -> None:
        self.queue_length.labels(self.route).set(queued)
        self.free_slots.labels(self.route).set(free_slots)
