"""Prometheus metrics of the billing service, on their own registry (served by the ops
listener, never on the gRPC port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
HOLD_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class BillingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_seconds = Histogram(
            "regio_billing_rpc_duration_seconds",
            "Time to answer a gRPC call (reserve latency is method=Reserve).",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.rpcs = Counter(
            "regio_billing_rpc",
            "gRPC calls answered, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.reserve_refusals = Counter(
            "regio_billing_reserve_refusals",
            "Holds refused, by reason (insufficient_budget, invalid, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.settlements = Counter(
            "regio_billing_settlements",
            "Usage records handled, by outcome (settled, duplicate, rejected).",
            ["outcome"],
            registry=self.registry,
        )
        self.holds_per_statement = Histogram(
            "regio_billing_holds_per_statement",
            "Holds written by one statement: above 1 when concurrent Reserves of one account "
            "and route shared it (see hold_batching.py).",
            buckets=HOLD_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.usage_rejected = Counter(
            "regio_billing_usage_rejected",
            "Usage records that failed validation against their hold, by reason: over_hold "
            "(more tokens than reserved: clamped to the hold and settled), account_mismatch and "
            "route_mismatch (refused, nothing charged).",
            ["reason"],
            registry=self.registry,
        )
        self.auth_refusals = Counter(
            "regio_billing_auth_refusals",
            "gRPC calls refused by the credential check, by reason (unauthenticated, "
            "permission_denied) and client name (`unknown` without a valid token).",
            ["reason", "client"],
            registry=self.registry,
        )
        self.settlement_lag_seconds = Histogram(
            "regio_billing_settlement_lag_seconds",
            "From a usage record's creation by the worker to its settlement's commit.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.holds_open = Gauge(
            "regio_billing_holds_open",
            "Holds taken and not yet settled or released.",
            registry=self.registry,
        )
        self.holds_expired = Counter(
            "regio_billing_holds_expired",
            "Holds released by the sweeper because they outlived their expiry.",
            registry=self.registry,
        )
        self.database_errors = Counter(
            "regio_billing_database_errors",
            "PostgreSQL errors met while serving calls or settling usage.",
            registry=self.registry,
        )
        self.nats_errors = Counter(
            "regio_billing_nats_errors",
            "NATS/JetStream errors met while consuming usage records.",
            registry=self.registry,
        )
