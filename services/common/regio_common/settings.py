"""Settings mixins composed per service. Every field reads `REGIO_<FIELD>` from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CATALOGUE = PROJECT_ROOT / "config" / "catalogue.dev.toml"


class RegioSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGIO_", extra="ignore")


class LoggingSettings(RegioSettings):
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    log_format: str = Field("json", description="`json` (one object a line) or `console`.")


class NatsSettings(RegioSettings):
    nats_url: str = Field(
        "nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated."
    )
    nats_stream_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Replicas of the usage stream and the config bucket when a service creates "
        "them (3 on a 3-node JetStream cluster; existing streams keep theirs).",
    )


class DatabaseSettings(RegioSettings):
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/regio", description="PostgreSQL connection URL."
    )
    database_pool_size: int = Field(10, description="Connections in each service's pool.")


class CatalogueSettings(RegioSettings):
    catalogue_path: Path = Field(
        DEFAULT_CATALOGUE, description="TOML file with regions, countries and routes."
    )


class BillingClientSettings(RegioSettings):
    billing_address: str = Field(
        "127.0.0.1:50051", description="host:port of the billing gRPC service."
    )
    billing_timeout_seconds: float = Field(2.0, description="Deadline of each billing call.")
    billing_token: str = Field(
        "",
        description="Bearer token this service presents to billing (one of billing's "
        "`REGIO_BILLING_CLIENT_TOKENS`); empty: none sent.",
    )


class ApiKeySettings(RegioSettings):
    api_key_pepper: str = Field(
        "",
        description="Server-side secret mixed into API key hashes (HMAC-SHA256); the gateway "
        "and the dashboard must share it. Changing it invalidates every issued key. Empty: "
        "no pepper (a warning at start).",
    )
