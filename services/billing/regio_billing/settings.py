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
    hold_sweep_interval_seconds: float = Field(
        5.0, gt=0, description="How often expired credit holds are released."
    )
    usage_fetch_batch: int = Field(
        64, gt=0, description="Most usage records fetched from JetStream in one pull."
    )
