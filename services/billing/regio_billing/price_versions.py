"""Versioned route prices: the catalogue is the source, billing.route_prices the history.

A price change appends a version; nothing is ever rewritten. Reserve prices a hold at the
latest version, and the hold keeps those prices until it is settled."""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing.pricing import Prices

log = structlog.get_logger()

Connection = AsyncConnection[TupleRow]

# Serialises the price publication of several billing replicas starting side by side.
PRICES_LOCK_KEY = 0x5E61_0001


async def latest_prices(conn: Connection, route: str) -> Prices | None:
    cursor = await conn.execute(
        "SELECT input_price_nano, output_price_nano FROM billing.route_prices"
        " WHERE route = %s ORDER BY valid_from DESC, id DESC LIMIT 1",
        (route,),
    )
    row = await cursor.fetchone()
    return None if row is None else Prices(input_price_nano=row[0], output_price_nano=row[1])


async def publish_prices(conn: Connection, prices: Mapping[str, Prices]) -> list[str]:
    """Append a version for every route whose price differs from its latest version (or that
    has none); returns the routes that got a new version. Runs in the caller's transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PRICES_LOCK_KEY,))
    changed: list[str] = []
    for route, new in sorted(prices.items()):
        if await latest_prices(conn, route) == new:
            continue
        await conn.execute(
            "INSERT INTO billing.route_prices (route, input_price_nano, output_price_nano)"
            " VALUES (%s, %s, %s)",
            (route, new.input_price_nano, new.output_price_nano),
        )
        changed.append(route)
        log.info(
            "route_price_version_added",
            route=route,
            input_price_nano=new.input_price_nano,
            output_price_nano=new.output_price_nano,
        )
    return changed
