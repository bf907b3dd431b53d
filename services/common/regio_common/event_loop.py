"""The services' event loop: uvloop, whose libuv transports cut the per-request cost of every
socket the hot path touches (HTTP in and out, NATS, PostgreSQL) against asyncio's own loop."""

from __future__ import annotations

import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run_service(main: Coroutine[Any, Any, T]) -> T:
    """Runs a service's main coroutine to completion on a new uvloop event loop.

    The objects made by the imports (modules, pydantic schemas, protobuf descriptors: some
    150,000) are moved out of the garbage collector's sight first: they live as long as the
    process, and a full collection that walks them pauses the loop for 50-90 ms here, a pause
    some request in flight would wait out."""
    gc.freeze()
    return uvloop.run(main)
