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
from regio_gateway.hold_and_dispatch import SpeculationGuard
from regio_gateway.media.fetch import MediaFetcher
from regio_gateway.media.loader import MediaLoader
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
    media: MediaLoader  # images, PDFs and audio of requests; its HTTP client closes on cleanup
    # Which requests are offered to a worker while their hold is being decided.
    speculation: SpeculationGuard

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
            speculation=SpeculationGuard(),
            media=MediaLoader(
                settings,
                MediaFetcher(
                    timeout_seconds=settings.media_fetch_timeout_seconds,
                    max_redirects=settings.media_fetch_max_redirects,
                    allow_private_addresses=settings.media_fetch_allow_private_addresses,
                    ca_file=settings.media_fetch_ca_file,
                ),
            ),
        )


STATE_KEY = web.AppKey("gateway_state", GatewayState)
