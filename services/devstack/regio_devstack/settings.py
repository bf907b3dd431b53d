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
        None,
        description="make run: use this NATS server instead of starting one; every service "
        "connects with this URL as it is (its credentials included).",
    )
    database_url: str | None = Field(
        None, description="make run: use this PostgreSQL instead of starting one."
    )
    gateway_port: int = Field(8080, description="Port the gateway listens on.")
    gateway_metrics_port: int = Field(
        9464,
        description="Port of the ops listener: `/health`, `/ready` and Prometheus `/metrics` "
        "(0: not served; never the API port).",
    )
    billing_metrics_port: int = Field(
        9466, description="Port of the billing ops listener (0: not served)."
    )
    dashboard_metrics_port: int = Field(
        9467, description="Port of the dashboard API's ops listener (0: not served)."
    )
    worker_metrics_port: int = Field(
        9465,
        description="Port of the worker's ops listener (0: not served); under make run the "
        "first worker gets it and any further worker a free port.",
    )
    dashboard_port: int = Field(8081, description="Port the dashboard API listens on.")
    billing_port: int = Field(50051, description="make run: port of the billing gRPC service.")
    worker_country: str = Field("de", description="make run: country of the local workers.")
    demo_credit_eur: str = Field("10", description="make run: credit of the demo account.")
