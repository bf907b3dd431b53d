"""Dashboard API configuration (env prefix REGIO_)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from regio_common.settings import (
    ApiKeySettings,
    BillingClientSettings,
    CatalogueSettings,
    DatabaseSettings,
    LoggingSettings,
    NatsSettings,
)


class DashboardSettings(
    LoggingSettings,
    NatsSettings,
    DatabaseSettings,
    CatalogueSettings,
    BillingClientSettings,
    ApiKeySettings,
):
    dashboard_host: str = Field("127.0.0.1", description="Address the dashboard API listens on.")
    dashboard_port: int = Field(8081, description="Port the dashboard API listens on.")
    dashboard_metrics_port: int = Field(
        9467,
        ge=0,
        description="Port of the ops listener: `/health`, `/ready` (PostgreSQL and NATS) and "
        "Prometheus `/metrics` (0: not served; never the API port).",
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin role (required; never an inference key)."
    )
    admin_label: str = Field(
        "admin", description="Name of the admin credential, recorded as the actor in the audit log."
    )
    free_system_prompt_max_chars: int = Field(
        1024, description="Longest free system prompt an activation may carry."
    )
