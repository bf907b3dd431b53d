"""Gateway configuration (env prefix REGIO_)."""

from __future__ import annotations

from pydantic import Field

from regio_common.settings import (
    ApiKeySettings,
    BillingClientSettings,
    CatalogueSettings,
    LoggingSettings,
    NatsSettings,
    RegioSettings,
)
from regio_gateway.media.settings import MediaSettings


class EdgeProtectionSettings(RegioSettings):
    """Global protections of the public listener: sizes, concurrency, timeouts, failed-auth
    throttling. Per-key and per-account limits are configured through the dashboard instead."""

    max_content_parts: int = Field(
        64, ge=1, description="Most content parts accepted in one message."
    )
    max_tools: int = Field(128, ge=1, description="Most tools accepted in one request.")
    max_request_line_bytes: int = Field(
        8190, ge=256, description="Longest request line (method, URL, version); longer: 400."
    )
    max_header_bytes: int = Field(
        8190, ge=256, description="Longest single header (name or value); longer: 400."
    )
    max_headers: int = Field(128, ge=8, description="Most headers in one request; more: 400.")
    max_concurrent_requests: int = Field(
        1024,
        ge=1,
        description="Requests one gateway process serves at once; beyond: 503 `server_busy`.",
    )
    max_concurrent_requests_per_client: int = Field(
        64,
        ge=1,
        description="Requests one client address has in flight at once in one gateway process; "
        "beyond: 429 `too_many_requests`.",
    )
    keepalive_timeout_seconds: float = Field(
        75.0,
        gt=0,
        description="An idle HTTP connection is closed after this long; also the time a new "
        "connection has to send its first request's headers.",
    )
    body_read_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Time to receive a request's whole body; slower: 408 `request_timeout`.",
    )
    stream_write_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="A stream whose client does not take the next bytes within this long is "
        "ended: the generation is cancelled (the delivered part is billed) and the connection "
        "closed.",
    )
    auth_failures_per_minute: int = Field(
        20,
        ge=1,
        description="Failed key checks (403/400) one client address may cause per minute in one "
        "gateway process; beyond: every request of that address gets 429 `too_many_requests` "
        "for the rest of the minute.",
    )
    trusted_proxy_hops: int = Field(
        0,
        ge=0,
        description="Proxies in front of the gateway that append to X-Forwarded-For; the client "
        "address is the N-th entry from the right (0: the TCP peer).",
    )


class GatewaySettings(
    LoggingSettings,
    NatsSettings,
    CatalogueSettings,
    BillingClientSettings,
    ApiKeySettings,
    EdgeProtectionSettings,
    MediaSettings,
):
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
    max_body_bytes: int = Field(
        20 * 1024 * 1024,
        description="Largest accepted request body (room for base64 media: 4 bytes per 3); keep "
        "it equal to the Ingress' proxy-body-size and below NATS' max_payload.",
    )
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
