"""`python -m regio_billing`: run the billing service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import signal

import structlog

from regio_billing.app import BillingApp
from regio_billing.settings import BillingSettings
from regio_common.event_loop import run_service
from regio_common.logging import configure_logging
from regio_common.ops_server import OpsServer


async def serve(settings: BillingSettings) -> None:
    log = structlog.get_logger()
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)

    app = BillingApp(settings)
    # Up before start-up (migrations may take a while): liveness answers, readiness says why not.
    ops = OpsServer(app.metrics.registry, app.readiness_checks())
    await ops.start(settings.ops_host, settings.billing_metrics_port)
    try:
        try:
            await app.start()
        except Exception:
            log.exception("billing_start_failed")
            raise SystemExit(1) from None
        # What start-up created (modules, stubs, the catalogue, pools) lives until exit: frozen,
        # the collector's full passes skip it, which otherwise pause every call in flight
        # (a tail of Reserve's latency).
        gc.freeze()
        log.info("billing_ready", address=app.address, metrics_port=settings.billing_metrics_port)
        await stop_requested.wait()
        log.info("billing_stopping")
        await app.stop()
    finally:
        await ops.stop()
    log.info("billing_stopped")


def main() -> None:
    settings = BillingSettings()
    configure_logging("billing", settings.log_level, settings.log_format)
    run_service(serve(settings))


if __name__ == "__main__":
    main()
