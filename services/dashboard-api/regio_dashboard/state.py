"""Everything the dashboard's handlers need, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from nats.aio.client import Client

from regio_common.catalogue import Catalogue
from regio_dashboard.adjustments_client import AdjustmentsClient
from regio_dashboard.audit_store import AuditStore
from regio_dashboard.billing_client import CreditsClient
from regio_dashboard.idempotency_store import IdempotencyStore
from regio_dashboard.limits_store import LimitsStore
from regio_dashboard.management_tokens import ManagementTokenStore
from regio_dashboard.projection import ConfigProjection
from regio_dashboard.store import DashboardStore


@dataclass
class DashboardState:
    admin_token: str
    free_system_prompt_max_chars: int
    catalogue: Catalogue
    nats: Client
    store: DashboardStore
    management_tokens: ManagementTokenStore
    projection: ConfigProjection
    credits: CreditsClient
    idempotency: IdempotencyStore
    audit: AuditStore
    adjustments: AdjustmentsClient
    limits: LimitsStore
    admin_label: str = "admin"


STATE_KEY = web.AppKey("dashboard_state", DashboardState)
