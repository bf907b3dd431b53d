"""Billing configuration (env prefix REGIO_)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

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
        128,
        gt=0,
        description="Most usage records fetched from JetStream in one pull, settled in one "
        "transaction. Larger pulls cost less per record but hold their accounts' rows locked "
        "longer, which a Reserve on those accounts waits for.",
    )
    usage_linger_seconds: float = Field(
        0.05,
        ge=0,
        description="A pull that brought fewer records than `REGIO_USAGE_FETCH_BATCH` waits "
        "this long for more before it is settled: fewer, larger transactions under moderate "
        "load, and a settlement out of the way of the next request (0: settle at once).",
    )
    billing_client_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="The clients allowed to call billing's gRPC API and their bearer tokens, "
        'as JSON: `{"gateway": "<token>", "dashboard": "<token>"}`. The `gateway` client may '
        "call only Reserve, Release, Settle and GetBalance; any other client may call every "
        "method. Empty: no authentication (a `billing_auth_disabled` warning at start).",
    )

    @field_validator("billing_client_tokens")
    @classmethod
    def _tokens_are_usable(cls, tokens: dict[str, SecretStr]) -> dict[str, SecretStr]:
        values = [token.get_secret_value() for token in tokens.values()]
        if any(not name for name in tokens):
            raise ValueError("a client name cannot be empty")
        if any(not value.strip() for value in values):
            raise ValueError("a client token cannot be empty")
        if len(set(values)) != len(values):
            raise ValueError("each client needs its own token")  # else who is calling?
        return tokens

    @property
    def ops_host(self) -> str:
        """The ops listener listens on the gRPC address's host (`[::]` becomes `::`)."""
        host = self.billing_listen_address.rpartition(":")[0]
        return host.strip("[]") or "0.0.0.0"
