"""The services' event loop: uvloop, whose libuv transports cut the per-request cost of every
socket the hot path touches (HTTP in and out, NATS, PostgreSQL) against asyncio's own loop."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run_service(main: Coroutine[Any, Any, T]) -> T:
    """Runs a service's main coroutine to completion on a new uvloop event loop."""
    return uvloop.run(main)
