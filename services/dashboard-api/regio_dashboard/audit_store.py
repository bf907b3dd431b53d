"""PostgreSQL access to the audit log: who did what to which account, when and why (manual
credit adjustments, changes of usage limits)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncCursor
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from regio_dashboard.credentials import new_id
from regio_dashboard.store import after_clause

AUDIT_COLUMNS = "entry_id, actor, action, account_id, amount_nano, reason, outcome, created_at"


@dataclass(frozen=True)
class AuditEntry:
    entry_id: str
    actor: str
    action: str
    account_id: str
    amount_nano: int
    reason: str
    outcome: str  # pending until billing answered: applied or refused
    created_at: datetime


async def insert_audit_entry(
    cur: AsyncCursor[dict[str, Any]],
    actor: str,
    action: str,
    account_id: str,
    amount_nano: int,
    reason: str,
    outcome: str = "pending",
) -> AuditEntry:
    """Record an entry on the caller's cursor, so that a change made in the same transaction
    and its entry commit together (or neither does)."""
    await cur.execute(
        "INSERT INTO dashboard.audit_log"
        " (entry_id, actor, action, account_id, amount_nano, reason, outcome)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {AUDIT_COLUMNS}",
        (new_id("audit"), actor, action, account_id, amount_nano, reason, outcome),
    )
    row = await cur.fetchone()
    assert row is not None
    return AuditEntry(**row)


class AuditStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def record(
        self, actor: str, action: str, account_id: str, amount_nano: int, reason: str
    ) -> AuditEntry:
        """Written before the change is attempted, so that no change goes unrecorded."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return await insert_audit_entry(cur, actor, action, account_id, amount_nano, reason)

    async def set_outcome(self, entry_id: str, outcome: str) -> AuditEntry:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE dashboard.audit_log SET outcome = %s WHERE entry_id = %s"
                f" RETURNING {AUDIT_COLUMNS}",
                (outcome, entry_id),
            )
            row = await cur.fetchone()
        assert row is not None
        return AuditEntry(**row)

    async def list_entries(
        self, fetch: int, after: tuple[datetime, str] | None, account_id: str | None = None
    ) -> list[AuditEntry]:
        condition, params = after_clause("created_at, entry_id", after)
        if account_id is not None:
            condition += " AND account_id = %s"
            params = (*params, account_id)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {AUDIT_COLUMNS} FROM dashboard.audit_log WHERE {condition}"
                " ORDER BY created_at, entry_id LIMIT %s",
                (*params, fetch),
            )
            return [AuditEntry(**row) for row in await cur.fetchall()]
