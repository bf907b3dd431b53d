"""Billing configuration (env prefix REGIO_)."""

from __future__ import annotations

from pydantic import Field

from regio_common.settings import (
    CatalogueSettings,
    DatabaseSettings,
    LoggingSettings,
    NatsSettings,
)


class BillingSettings(LoggingSettings, NatsSettings, DatabaseSettings, CatalogueSettings):
    billing_listen_address: str = Field(
        "127.0.0.1:50051",
        description="host:port the billing gRPC server listens on (port 0 picks a free port).",
    )
    billing_metrics_port: int = Field(
        9466,
        ge=0,
        description="Port of the ops listener: `/health`, `/ready` (PostgreSQL and NATS) and "
        "Prometheus `/metrics` (0: not served); on the host of REGIO_BILLING_LISTEN_ADDRESS.",
    )
    hold_sweep_interval_seconds: float = Field(
        5.0, gt=0, description="How often expired credit holds are released."
    )
    usage_fetch_batch: int = Field(
        64, gt=0, description="Most usage records fetched from JetStream in one pull."
    )

    @property
    def ops_host(self) -> str:
        """The ops listener listens on the gRPC address's host (`[::]` becomes `::`)."""
        host = self.billing_listen_address.rpartition(":")[0]
        return host.strip("[]") or "0.0.0.0"
