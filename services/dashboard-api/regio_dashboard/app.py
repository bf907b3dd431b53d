"""Wiring of the dashboard API: migrations, pool, NATS KV projection, billing, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from regio_common.catalogue import Catalogue
from regio_common.config_records import config_bucket
from regio_common.http_middleware import transaction_middleware
from regio_common.migrations import apply_migrations
from regio_common.nats_connection import connect_nats
from regio_dashboard.adjustments_client import AdjustmentsClient
from regio_dashboard.audit_store import AuditStore
from regio_dashboard.billing_client import CreditsClient
from regio_dashboard.credentials import SecretHasher
from regio_dashboard.handlers import add_routes
from regio_dashboard.idempotency import idempotency_middleware
from regio_dashboard.idempotency_store import IdempotencyStore
from regio_dashboard.limits_store import LimitsStore
from regio_dashboard.management_tokens import ManagementTokenStore
from regio_dashboard.metrics import DashboardMetrics
from regio_dashboard.projection import ConfigProjection
from regio_dashboard.settings import DashboardSettings
from regio_dashboard.state import STATE_KEY, DashboardState
from regio_dashboard.store import DashboardStore

MIGRATIONS = Path(__file__).parent / "migrations"


@asynccontextmanager
async def dashboard_state(settings: DashboardSettings) -> AsyncIterator[DashboardState]:
    if settings.admin_token is None or not settings.admin_token.get_secret_value():
        raise SystemExit("REGIO_ADMIN_TOKEN must be set: the dashboard API has no default admin")
    if not settings.api_key_pepper:
        # Works (gateways hash alike), but a leaked key table could then be checked offline.
        structlog.get_logger().warning("api_key_pepper_missing")
    await apply_migrations(settings.database_url, "dashboard", MIGRATIONS)
    pool = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=settings.database_pool_size, open=False
    )
    await pool.open(wait=True)
    nc = await connect_nats(settings.nats_url, name="regio-dashboard-api")
    billing = (settings.billing_address, settings.billing_timeout_seconds, settings.billing_token)
    credits = CreditsClient(*billing)
    adjustments = AdjustmentsClient(*billing)
    hasher = SecretHasher(settings.api_key_pepper)
    store = DashboardStore(pool, hasher)
    bucket = await config_bucket(nc.jetstream(), settings.nats_stream_replicas)
    projection = ConfigProjection(bucket, store)
    await projection.rebuild()
    try:
        yield DashboardState(
            admin_token=settings.admin_token.get_secret_value(),
            free_system_prompt_max_chars=settings.free_system_prompt_max_chars,
            catalogue=Catalogue.load(settings.catalogue_path),
            nats=nc,
            store=store,
            management_tokens=ManagementTokenStore(pool, hasher),
            projection=projection,
            credits=credits,
            idempotency=IdempotencyStore(pool),
            audit=AuditStore(pool),
            adjustments=adjustments,
            limits=LimitsStore(pool),
            admin_label=settings.admin_label,
        )
    finally:
        await adjustments.close()
        await credits.close()
        await nc.drain()
        await pool.close()


def build_app(state: DashboardState, metrics: DashboardMetrics | None = None) -> web.Application:
    middlewares = metrics.around(transaction_middleware) if metrics else [transaction_middleware]
    # Idempotency runs inside the error middleware, so its refusals are rendered as envelopes.
    app = web.Application(
        middlewares=[*middlewares, idempotency_middleware], client_max_size=256 * 1024
    )
    app[STATE_KEY] = state
    add_routes(app)
    return app
