"""The PostgreSQL connection pool and the billing schema's migrations."""

from __future__ import annotations

from pathlib import Path

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from regio_common.migrations import apply_migrations

SCHEMA = "billing"
MIGRATIONS_FOLDER = Path(__file__).parent / "migrations"

BillingPool = AsyncConnectionPool[AsyncConnection[TupleRow]]


async def migrate(database_url: str) -> list[int]:
    return await apply_migrations(database_url, SCHEMA, MIGRATIONS_FOLDER)


async def open_pool(database_url: str, max_size: int) -> BillingPool:
    # Autocommit: every write runs in an explicit `conn.transaction()`, and plain reads never
    # leave a connection idle in a transaction.
    pool: BillingPool = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": True},
        open=False,
        name="billing",
    )
    await pool.open(wait=True, timeout=30.0)
    return pool
