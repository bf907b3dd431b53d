"""`python -m regio_dashboard`: serve the dashboard API until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from regio_common.logging import configure_logging
from regio_dashboard.app import build_app, dashboard_state
from regio_dashboard.settings import DashboardSettings


async def serve(settings: DashboardSettings) -> None:
    log = configure_logging("dashboard-api", settings.log_level, settings.log_format)
    async with dashboard_state(settings) as state:
        runner = web.AppRunner(build_app(state), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.dashboard_host, settings.dashboard_port).start()
        log.info("dashboard_ready", host=settings.dashboard_host, port=settings.dashboard_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()


def main() -> None:
    asyncio.run(serve(DashboardSettings()))


if __name__ == "__main__":
    main()
