"""Dashboard API configuration (env prefix REGIO_)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from regio_common.settings import (
    BillingClientSettings,
    CatalogueSettings,
    DatabaseSettings,
    LoggingSettings,
    NatsSettings,
)


class DashboardSettings(
    LoggingSettings, NatsSettings, DatabaseSettings, CatalogueSettings, BillingClientSettings
):
    dashboard_host: str = Field("127.0.0.1", description="Address the dashboard API listens on.")
    dashboard_port: int = Field(8081, description="Port the dashboard API listens on.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin role (required; never an inference key)."
    )
    free_system_prompt_max_chars: int = Field(
        1024, description="Longest free system prompt an activation may carry."
    )
