"""PostgreSQL side of usage limits: each change of an account's or a key's limits is written
together with its audit entry, in one transaction."""

from __future__ import annotations

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from regio_common.config_records import UsageLimits
from regio_common.money import nano_to_eur
from regio_dashboard.audit_store import insert_audit_entry
from regio_dashboard.store import LIMIT_COLUMNS, LIMIT_FIELDS, limits_of

ACCOUNT_LIMITS_ACTION = "account_limits_set"
KEY_LIMITS_ACTION = "key_limits_set"
_ASSIGNMENTS = ", ".join(f"{name} = %s" for name in LIMIT_FIELDS)


def describe_limits(limits: UsageLimits) -> str:
    """The limits as the audit log's reason, e.g. `requests_per_minute=60, daily_spend_cap_eur=5,
    ... (none: no limit)`."""
    parts = []
    for name, value in limits.model_dump().items():
        if name.endswith("_nano"):
            name = name.removesuffix("_nano") + "_eur"
            value = None if value is None else f"{nano_to_eur(value):f}"
        parts.append(f"{name}={'none' if value is None else value}")
    return ", ".join(parts)


def _column_values(limits: UsageLimits) -> tuple[int | None, ...]:
    return tuple(getattr(limits, name) for name in LIMIT_FIELDS)


class LimitsStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def set_account_limits(
        self, account_id: str, limits: UsageLimits, actor: str
    ) -> UsageLimits | None:
        """Replace every limit of the account; None when there is no such account."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"UPDATE dashboard.accounts SET {_ASSIGNMENTS} WHERE account_id = %s"
                f" RETURNING {LIMIT_COLUMNS}",
                (*_column_values(limits), account_id),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            stored = limits_of(row)
            await insert_audit_entry(
                cur,
                actor,
                ACCOUNT_LIMITS_ACTION,
                account_id,
                0,
                describe_limits(stored),
                outcome="applied",
            )
        return stored

    async def set_key_limits(
        self, account_id: str, key_id: str, limits: UsageLimits, actor: str
    ) -> UsageLimits | None:
        """Replace every limit of the account's key; None when the account has no such key."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"UPDATE dashboard.api_keys SET {_ASSIGNMENTS}"
                f" WHERE account_id = %s AND key_id = %s RETURNING {LIMIT_COLUMNS}",
                (*_column_values(limits), account_id, key_id),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            stored = limits_of(row)
            await insert_audit_entry(
                cur,
                actor,
                KEY_LIMITS_ACTION,
                account_id,
                0,
                f"key {key_id}: {describe_limits(stored)}",
                outcome="applied",
            )
        return stored
