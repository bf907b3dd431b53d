"""Wiring of the gateway: connections, background followers, routes, and the HTTP server."""

from __future__ import annotations

import structlog
from aiohttp import web
from nats.aio.msg import Msg

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Catalogue
from regio_common.config_records import config_bucket
from regio_common.http_middleware import transaction_middleware
from regio_common.nats_connection import connect_nats
from regio_common.subjects import HEARTBEAT_WILDCARD
from regio_gateway.auth_throttle import auth_throttle_middleware
from regio_gateway.billing_client import BillingClient
from regio_gateway.client_address import request_client_address
from regio_gateway.concurrency_limits import concurrency_middleware
from regio_gateway.config_store import ConfigStore
from regio_gateway.dispatch import Dispatcher
from regio_gateway.handlers.chat_completions import create_chat_completion
from regio_gateway.handlers.completions import create_completion
from regio_gateway.handlers.models import health, list_models
from regio_gateway.metrics import GatewayMetrics
from regio_gateway.regions import endpoint_region
from regio_gateway.reply_inbox import ReplyInbox
from regio_gateway.settings import GatewaySettings
from regio_gateway.state import STATE_KEY, GatewayState
from regio_gateway.worker_registry import WorkerRegistry

log = structlog.get_logger()


async def build_state(settings: GatewaySettings) -> GatewayState:
    catalogue = Catalogue.load(settings.catalogue_path)
    metrics = GatewayMetrics()
    nc = await connect_nats(settings.nats_url, name="regio-gateway")
    registry = WorkerRegistry(expiry_factor=settings.heartbeat_expiry_factor)

    async def on_heartbeat(msg: Msg) -> None:
        try:
            registry.observe(inference_pb2.WorkerHeartbeat.FromString(msg.data))
        except Exception:  # a malformed heartbeat must not stop the subscription
            log.warning("bad_heartbeat", subject=msg.subject)

    await nc.subscribe(HEARTBEAT_WILDCARD, cb=on_heartbeat)
    if not settings.api_key_pepper:
        log.warning(
            "api_key_pepper_missing",
            detail="REGIO_API_KEY_PEPPER is empty: API keys are hashed without a pepper",
        )
    config = ConfigStore(pepper=settings.api_key_pepper)
    await config.start(await config_bucket(nc.jetstream(), settings.nats_stream_replicas))
    inbox = ReplyInbox(nc)
    await inbox.start()
    return GatewayState.with_edge_protections(
        settings,
        catalogue=catalogue,
        nats=nc,
        config=config,
        workers=registry,
        billing=BillingClient(
            settings.billing_address,
            settings.billing_timeout_seconds,
            token=settings.billing_token,
            metrics=metrics,
        ),
        dispatcher=Dispatcher(
            nc,
            inbox,
            registry,
            accept_timeout=settings.dispatch_timeout_seconds,
            first_chunk_timeout=settings.first_token_timeout_seconds,
            inter_chunk_timeout=settings.inter_chunk_timeout_seconds,
            metrics=metrics,
        ),
        metrics=metrics,
    )


async def close_state(state: GatewayState) -> None:
    await state.config.stop()
    await state.billing.close()
    await state.nats.drain()


def build_app(state: GatewayState) -> web.Application:
    # The body limit is enforced by the handler (to answer with the envelope and a param);
    # aiohttp's own limit stays above it as a backstop.
    def region_of(request: web.Request) -> str:
        return endpoint_region(request, state.catalogue, state.settings.default_region)

    def address_of(request: web.Request) -> str:
        return request_client_address(request, state.settings.trusted_proxy_hops)

    app = web.Application(
        # Request metrics outermost, so that they count the error responses the transaction
        # middleware renders; refusals inside, where the error itself is still visible; then the
        # edge protections, whose refusals are counted too: failed-auth throttling first (a
        # throttled address takes no concurrency slot), then the in-flight limits.
        middlewares=[
            state.metrics.middleware(region_of),
            transaction_middleware,
            state.metrics.refusal_middleware(),
            auth_throttle_middleware(state.auth_throttle, address_of, state.metrics),
            concurrency_middleware(state.in_flight, address_of),
        ],
        client_max_size=state.settings.max_body_bytes * 2,
    )
    app[STATE_KEY] = state

    async def close_media_client(app: web.Application) -> None:
        await state.media.close()

    app.on_cleanup.append(close_media_client)
    app.router.add_post("/v1/chat/completions", create_chat_completion)
    app.router.add_post("/v1/completions", create_completion)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    return app
