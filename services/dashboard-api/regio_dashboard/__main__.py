"""`python -m regio_dashboard`: serve the dashboard API until SIGTERM/SIGINT, with the ops
listener (/health, /ready, /metrics) on its own port."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from regio_common.event_loop import run_service
from regio_common.logging import configure_logging
from regio_common.ops_server import OpsServer, nats_check, postgres_check
from regio_dashboard.app import build_app, dashboard_state
from regio_dashboard.metrics import DashboardMetrics
from regio_dashboard.settings import DashboardSettings

# A readiness `SELECT 1` waits at most this long for its connection.
READY_POOL_WAIT_SECONDS = 1.5


@asynccontextmanager
async def readiness_pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """One connection of its own for /ready, so that probes never wait behind API requests;
    checked before use, so that a restarted PostgreSQL is seen at once."""
    pool: AsyncConnectionPool = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=1,
        open=False,
        check=AsyncConnectionPool.check_connection,
        name="dashboard-ready",
    )
    await pool.open(wait=False)
    try:
        yield pool
    finally:
        await pool.close()


async def serve(settings: DashboardSettings) -> None:
    log = configure_logging("dashboard-api", settings.log_level, settings.log_format)
    metrics = DashboardMetrics()
    async with dashboard_state(settings) as state, readiness_pool(settings.database_url) as pool:
        ops = OpsServer(
            metrics.registry,
            {
                "postgres": postgres_check(pool, READY_POOL_WAIT_SECONDS),
                "nats": nats_check(state.nats),
            },
        )
        await ops.start(settings.dashboard_host, settings.dashboard_metrics_port)
        runner = web.AppRunner(build_app(state, metrics), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.dashboard_host, settings.dashboard_port).start()
        log.info(
            "dashboard_ready",
            host=settings.dashboard_host,
            port=settings.dashboard_port,
            metrics_port=settings.dashboard_metrics_port,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
        await ops.stop()


def main() -> None:
    run_service(serve(DashboardSettings()))


if __name__ == "__main__":
    main()
