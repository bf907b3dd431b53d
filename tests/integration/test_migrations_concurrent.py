"""Migrations applied side by side, as in Kubernetes: the migrations Job (`python -m
regio_billing.migrate`, `python -m regio_dashboard.migrate`) and service pods starting at the same
moment all call `apply_migrations` on the same database. Each migration must be applied exactly
once, and nobody may fail because another process got there first."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import psycopg
import pytest

from regio_billing.database import MIGRATIONS_FOLDER as BILLING_MIGRATIONS
from regio_common.migrations import apply_migrations, load_migrations
from regio_dashboard.app import MIGRATIONS as DASHBOARD_MIGRATIONS
from regio_devstack.servers import PostgresServer

# A migration slow enough that unserialised runs would overlap: both would create the table, and
# the second would fail (duplicate table) or record the version twice.
SLOW_MIGRATION = "SELECT pg_sleep(0.5);\nCREATE TABLE slow_table (id integer PRIMARY KEY);\n"


async def recorded_versions(database_url: str, schema: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            f"SELECT version FROM {schema}.schema_migrations ORDER BY version"
        )
        return [row[0] for row in await cursor.fetchall()]


async def run_module(module: str, database_url: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        env={**os.environ, "REGIO_DATABASE_URL": database_url, "REGIO_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return await process.wait(), output.decode()


async def test_concurrent_runs_apply_a_slow_migration_once(
    fresh_database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "001_slow.sql").write_text(SLOW_MIGRATION)
    (tmp_path / "002_more.sql").write_text("ALTER TABLE slow_table ADD COLUMN note text;\n")
    results = await asyncio.gather(
        *(apply_migrations(fresh_database_url, "concurrent", tmp_path) for _ in range(4))
    )
    # Exactly one caller applied each version; the others found them done.
    applied = sorted(v for result in results for v in result)
    assert applied == [1, 2]
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]
    assert await recorded_versions(fresh_database_url, "concurrent") == [1, 2]


async def test_job_modules_and_starting_services_side_by_side(fresh_database_url: str) -> None:
    billing_versions = [m.version for m in load_migrations(BILLING_MIGRATIONS)]
    dashboard_versions = [m.version for m in load_migrations(DASHBOARD_MIGRATIONS)]
    # The Job's two containers and two "pods" of each service, all at once.
    (
        job_billing,
        job_dashboard,
        billing_a,
        billing_b,
        dashboard_a,
        dashboard_b,
    ) = await asyncio.gather(
        run_module("regio_billing.migrate", fresh_database_url),
        run_module("regio_dashboard.migrate", fresh_database_url),
        apply_migrations(fresh_database_url, "billing", BILLING_MIGRATIONS),
        apply_migrations(fresh_database_url, "billing", BILLING_MIGRATIONS),
        apply_migrations(fresh_database_url, "dashboard", DASHBOARD_MIGRATIONS),
        apply_migrations(fresh_database_url, "dashboard", DASHBOARD_MIGRATIONS),
    )
    assert job_billing[0] == 0, job_billing[1]
    assert job_dashboard[0] == 0, job_dashboard[1]
    assert '"event": "migrations_done"' in job_billing[1]
    assert await recorded_versions(fresh_database_url, "billing") == billing_versions
    assert await recorded_versions(fresh_database_url, "dashboard") == dashboard_versions
    # The in-process callers applied at most what the Job had not applied yet, never twice.
    for first, second in ((billing_a, billing_b), (dashboard_a, dashboard_b)):
        assert not set(first) & set(second)


async def test_migrate_module_exits_non_zero_when_the_database_is_unreachable(
    postgres_server: PostgresServer,
) -> None:
    missing = postgres_server.url("no_such_database_here")
    code, output = await run_module("regio_billing.migrate", missing)
    assert code == 1
    assert "migrations_failed" in output


@pytest.mark.parametrize("module", ["regio_billing.migrate", "regio_dashboard.migrate"])
async def test_rerunning_the_job_applies_nothing(fresh_database_url: str, module: str) -> None:
    first = await run_module(module, fresh_database_url)
    second = await run_module(module, fresh_database_url)
    assert first[0] == second[0] == 0
    assert '"applied": []' in second[1]
    assert '"applied": []' not in first[1]
