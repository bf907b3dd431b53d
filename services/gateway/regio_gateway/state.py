"""Everything a request handler needs, built once per process and kept on the aiohttp app."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from nats.aio.client import Client

from regio_common.catalogue import Catalogue
from regio_gateway.billing_client import BillingClient
from regio_gateway.config_store import ConfigStore
from regio_gateway.dispatch import Dispatcher
from regio_gateway.metrics import GatewayMetrics
from regio_gateway.settings import GatewaySettings
from regio_gateway.worker_registry import WorkerRegistry


@dataclass
class GatewayState:
    settings: GatewaySettings
    catalogue: Catalogue
    nats: Client
    config: ConfigStore
    workers: WorkerRegistry
    billing: BillingClient
    dispatcher: Dispatcher
    metrics: GatewayMetrics


STATE_KEY = web.AppKey("gateway_state", GatewayState)
