"""structlog configuration: JSON lines with the context (e.g. transaction_id) bound per request."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(
    service: str, level: str = "info", fmt: str = "json"
) -> structlog.stdlib.BoundLogger:
    """Configure structlog for this process and return the service's logger."""
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )

    def add_service(
        logger: object, method: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        event.setdefault("service", service)
        return event

    structlog.configure(
        processors=[
            add_service,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that use the stdlib logger (aiohttp, grpc, nats) go to stderr at warning level.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s"
    )
    logger: structlog.stdlib.BoundLogger = structlog.get_logger()
    return logger
