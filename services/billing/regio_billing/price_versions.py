"""Versioned route prices: billing.route_prices is the history, fed by the catalogue file (at
start) and by admins (through the dashboard).

A price change appends a version; nothing is ever rewritten. Reserve prices a hold at the
latest version, and the hold keeps those prices until it is settled. The catalogue's price is
republished only when the file's price itself changed since its last publication, so that an
admin's later change survives restarts until the operator edits the file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import structlog
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing.pricing import Prices

log = structlog.get_logger()

Connection = AsyncConnection[TupleRow]

# Serialises the price publication of several billing replicas starting side by side.
PRICES_LOCK_KEY = 0x5E61_0001


class PriceSource(StrEnum):
    CATALOGUE = "catalogue"
    ADMIN = "admin"


async def current_prices(conn: Connection, route: str, catalogued: Prices) -> Prices:
    """The price a new hold of the route gets: its latest version. Prices are published at
    start; a route added to the catalogue since is priced as catalogued."""
    prices = await latest_prices(conn, route)
    if prices is None:
        log.warning("route_price_unpublished", route=route)
        return catalogued
    return prices


@dataclass(frozen=True)
class PriceVersion:
    """A route's current prices and the id of their version (None: the route has no published
    version, so it is priced as catalogued)."""

    version_id: int | None
    prices: Prices


# The id of the latest price version of the route named by the parameter `route`: a scalar
# subquery, for a statement that acts only while the PriceVersion it was given is current.
LATEST_VERSION_ID = (
    "(SELECT id FROM billing.route_prices WHERE route = %(route)s"
    " ORDER BY valid_from DESC, id DESC LIMIT 1)"
)


async def current_price_version(conn: Connection, route: str, catalogued: Prices) -> PriceVersion:
    """`current_prices` with the id of the version."""
    cursor = await conn.execute(
        "SELECT id, input_price_nano, output_price_nano FROM billing.route_prices"
        " WHERE route = %s ORDER BY valid_from DESC, id DESC LIMIT 1",
        (route,),
    )
    row = await cursor.fetchone()
    if row is None:
        log.warning("route_price_unpublished", route=route)
        return PriceVersion(None, catalogued)
    return PriceVersion(row[0], Prices(input_price_nano=row[1], output_price_nano=row[2]))


async def latest_prices(
    conn: Connection, route: str, source: PriceSource | None = None
) -> Prices | None:
    """The route's current prices, or the latest published by `source`."""
    if source is None:
        cursor = await conn.execute(
            "SELECT input_price_nano, output_price_nano FROM billing.route_prices"
            " WHERE route = %s ORDER BY valid_from DESC, id DESC LIMIT 1",
            (route,),
        )
    else:
        cursor = await conn.execute(
            "SELECT input_price_nano, output_price_nano FROM billing.route_prices"
            " WHERE route = %s AND source = %s ORDER BY valid_from DESC, id DESC LIMIT 1",
            (route, source.value),
        )
    row = await cursor.fetchone()
    return None if row is None else Prices(input_price_nano=row[0], output_price_nano=row[1])


async def publish_prices(
    conn: Connection, prices: Mapping[str, Prices], source: PriceSource = PriceSource.CATALOGUE
) -> list[str]:
    """Append a version for every route whose price changed; returns the routes that got a new
    version. An admin's price is compared with the current one; the catalogue's with what the
    catalogue published last (see the module's docstring). Runs in the caller's transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PRICES_LOCK_KEY,))
    changed: list[str] = []
    compared_with = PriceSource.CATALOGUE if source is PriceSource.CATALOGUE else None
    for route, new in sorted(prices.items()):
        if await latest_prices(conn, route, compared_with) == new:
            continue
        await conn.execute(
            "INSERT INTO billing.route_prices"
            " (route, input_price_nano, output_price_nano, source) VALUES (%s, %s, %s, %s)",
            (route, new.input_price_nano, new.output_price_nano, source.value),
        )
        changed.append(route)
        log.info(
            "route_price_version_added",
            route=route,
            input_price_nano=new.input_price_nano,
            output_price_nano=new.output_price_nano,
            source=source.value,
        )
    return changed
