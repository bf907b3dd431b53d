"""Gateway configuration (env prefix REGIO_)."""

from __future__ import annotations

from pydantic import Field

from regio_common.settings import (
    BillingClientSettings,
    CatalogueSettings,
    LoggingSettings,
    NatsSettings,
)


class GatewaySettings(LoggingSettings, NatsSettings, CatalogueSettings, BillingClientSettings):
    gateway_host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    gateway_port: int = Field(8080, description="Port the gateway listens on.")
    gateway_metrics_port: int = Field(
        9464,
        description="Port of the ops listener: `/health`, `/ready` and Prometheus `/metrics` "
        "(0: not served; never the API port).",
    )
    default_region: str = Field(
        "eu", description="Region of requests whose Host does not start with a known region."
    )
    max_body_bytes: int = Field(1_048_576, description="Largest accepted request body.")
    max_messages: int = Field(1024, description="Most messages accepted in one request.")
    dispatch_timeout_seconds: float = Field(
        3.0, description="Time for a worker to accept a request before the gateway answers 503."
    )
    first_token_timeout_seconds: float = Field(
        120.0, description="Time from acceptance to the first chunk (includes queueing)."
    )
    inter_chunk_timeout_seconds: float = Field(
        30.0, description="Longest silence between two chunks of a running generation."
    )
    hold_ttl_seconds: int = Field(
        900, description="Lifetime of a credit hold; billing sweeps expired holds."
    )
    heartbeat_expiry_factor: float = Field(
        3.0, description="A worker is dead after this many missed heartbeat intervals."
    )
