"""Everything a request handler needs, built once per process and kept on the aiohttp app."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from nats.aio.client import Client

from regio_common.catalogue import Catalogue
from regio_gateway.auth_throttle import FailedAuthThrottle
from regio_gateway.billing_client import BillingClient
from regio_gateway.concurrency_limits import InFlightLimits
from regio_gateway.config_store import ConfigStore
from regio_gateway.deny_cache import LimitDenyCache
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
    deny_cache: LimitDenyCache
    auth_throttle: FailedAuthThrottle
    in_flight: InFlightLimits

    @classmethod
    def with_edge_protections(
        cls,
        settings: GatewaySettings,
        *,
        catalogue: Catalogue,
        nats: Client,
        config: ConfigStore,
        workers: WorkerRegistry,
        billing: BillingClient,
        dispatcher: Dispatcher,
        metrics: GatewayMetrics,
    ) -> GatewayState:
        """The state with fresh per-process protections sized by the settings."""
        return cls(
            settings=settings,
            catalogue=catalogue,
            nats=nats,
            config=config,
            workers=workers,
            billing=billing,
            dispatcher=dispatcher,
            metrics=metrics,
            deny_cache=LimitDenyCache(),
            auth_throttle=FailedAuthThrottle(settings.auth_failures_per_minute),
            in_flight=InFlightLimits(
                total=settings.max_concurrent_requests,
                per_client=settings.max_concurrent_requests_per_client,
            ),
        )


STATE_KEY = web.AppKey("gateway_state", GatewayState)
