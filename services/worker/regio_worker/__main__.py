"""`python -m regio_worker`: run one worker (configuration from REGIO_* environment variables)."""

from __future__ import annotations

import asyncio
import sys

import structlog

from regio_common.event_loop import run_service
from regio_common.logging import configure_logging
from regio_worker.app import StartupError, run_worker
from regio_worker.model_files import ModelFileError
from regio_worker.settings import WorkerSettings


def main() -> int:
    settings = WorkerSettings()
    log = configure_logging("worker", settings.log_level, settings.log_format)
    # Every log line of this process names the worker (tasks inherit these context variables).
    structlog.contextvars.bind_contextvars(
        service="worker",
        worker_id=settings.resolved_worker_id,
        route=settings.worker_route,
        country=settings.worker_country,
    )
    try:
        run_service(run_worker(settings))
    except asyncio.CancelledError:  # SIGTERM/SIGINT before the worker was serving
        log.info("worker_stopped_during_start_up")
        return 0
    except (StartupError, ModelFileError) as error:
        log.error("worker_start_failed", error=str(error))
        return 1
    except Exception:
        log.exception("worker_failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
