"""`python -m regio_gateway`: serve the OpenAI-compatible API until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from regio_common.event_loop import run_service
from regio_common.logging import configure_logging
from regio_common.ops_server import OpsServer, nats_check
from regio_gateway.app import build_app, build_state, close_state
from regio_gateway.edge_server import make_runner
from regio_gateway.settings import GatewaySettings


async def serve(settings: GatewaySettings) -> None:
    log = configure_logging("gateway", settings.log_level, settings.log_format)
    state = await build_state(settings)
    runner = make_runner(build_app(state), settings)
    await runner.setup()
    site = web.TCPSite(runner, settings.gateway_host, settings.gateway_port)
    await site.start()
    # /health, /ready and /metrics on their own port (0: off).
    ops = OpsServer(
        state.metrics.registry,
        {
            "nats": nats_check(state.nats),
            "billing": state.billing.check_reachable,
            "config": state.config.check_synced,
        },
    )
    await ops.start(settings.gateway_host, settings.gateway_metrics_port)
    log.info(
        "gateway_ready",
        host=settings.gateway_host,
        port=settings.gateway_port,
        metrics_port=settings.gateway_metrics_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway_stopping")
    await runner.cleanup()  # stops listening, lets in-flight requests finish
    await ops.stop()
    await close_state(state)


def main() -> None:
    run_service(serve(GatewaySettings()))


if __name__ == "__main__":
    main()
