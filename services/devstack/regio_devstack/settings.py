"""Configuration of `make run` (env prefix REGIO_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from regio_common.settings import PROJECT_ROOT, CatalogueSettings, RegioSettings


class DevstackSettings(CatalogueSettings, RegioSettings):
    data_dir: Path = Field(
        PROJECT_ROOT / ".regio", description="make run: where data, logs and the model live."
    )
    nats_url: str | None = Field(
        None, description="make run: use this NATS server instead of starting one."
    )
    database_url: str | None = Field(
        None, description="make run: use this PostgreSQL instead of starting one."
    )
    gateway_port: int = Field(8080, description="Port the gateway listens on.")
    gateway_metrics_port: int = Field(
        9464, description="Port of the Prometheus `/metrics` endpoint (0: not served)."
    )
    dashboard_port: int = Field(8081, description="Port the dashboard API listens on.")
    billing_port: int = Field(50051, description="make run: port of the billing gRPC service.")
    worker_country: str = Field("de", description="make run: country of the local workers.")
    demo_credit_eur: str = Field("10", description="make run: credit of the demo account.")
