"""Forward-only SQL migrations, applied at service start.

Each service owns one PostgreSQL schema and a folder of `NNN_name.sql` files. Applying is
serialised across replicas by an advisory lock and recorded in `<schema>.schema_migrations`."""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from regio_common.logging import configure_logging


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql_text: str


def load_migrations(folder: Path) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        version_text, _, name = path.stem.partition("_")
        migrations.append(Migration(int(version_text), name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {folder}")
    return migrations


async def apply_migrations(database_url: str, schema: str, folder: Path) -> list[int]:
    """Apply the pending migrations of `schema`; returns the versions applied now."""
    lock_key = zlib.crc32(f"regio-migrations-{schema}".encode())
    applied_now: list[int] = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        try:
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(sql.Identifier(schema))
            )
            cursor = await conn.execute(
                sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(schema))
            )
            done = {row[0] for row in await cursor.fetchall()}
            for migration in load_migrations(folder):
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema))
                    )
                    await conn.execute(migration.sql_text.encode())
                    await conn.execute(
                        sql.SQL(
                            "INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)"
                        ).format(sql.Identifier(schema)),
                        (migration.version, migration.name),
                    )
                applied_now.append(migration.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
    return applied_now


def run_migrations_command(
    service: str, database_url: str, schema: str, folder: Path, log_level: str, log_format: str
) -> None:
    """The body of a service's `python -m <service>.migrate` (the Kubernetes migrations Job):
    apply, log, and exit 1 on failure."""
    log = configure_logging(f"{service}-migrate", log_level, log_format)
    try:
        applied = asyncio.run(apply_migrations(database_url, schema, folder))
    except Exception:
        log.exception("migrations_failed", schema=schema)
        raise SystemExit(1) from None
    log.info("migrations_done", schema=schema, applied=applied)
