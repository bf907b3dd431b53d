"""PostgreSQL access of the dashboard: the source of truth for accounts, keys and activations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg.errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from regio_common.config_records import UsageLimits
from regio_common.errors import Conflict
from regio_dashboard.credentials import API_KEY_PREFIX, SecretHasher, new_id

# Accounts and keys carry one column per limit, named as the fields of UsageLimits.
LIMIT_FIELDS = tuple(UsageLimits.model_fields)
LIMIT_COLUMNS = ", ".join(LIMIT_FIELDS)
ACCOUNT_COLUMNS = f"account_id, name, status, created_at, {LIMIT_COLUMNS}"
KEY_COLUMNS = (
    "key_id, account_id, key_hash, prefix, last_four, created_at, revoked_at, activations,"
    f" {LIMIT_COLUMNS}"
)
ACTIVATION_COLUMNS = (
    "account_id, route, region, free_system_prompt, created_at,"
    " thinking_default_effort, thinking_reasoning_output"
)


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    status: str
    created_at: datetime
    limits: UsageLimits = field(default_factory=UsageLimits)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    account_id: str
    key_hash: str
    prefix: str
    last_four: str
    created_at: datetime
    revoked_at: datetime | None
    activations: list[str]  # "route/region" scope; empty = every activation of the account
    limits: UsageLimits = field(default_factory=UsageLimits)


@dataclass(frozen=True)
class Activation:
    account_id: str
    route: str
    region: str
    free_system_prompt: str
    created_at: datetime
    thinking_default_effort: str
    thinking_reasoning_output: str


@dataclass(frozen=True)
class AccountKeys:
    """An account's status and keys, read while holding the account's projection lock."""

    account: Account | None
    keys: list[ApiKey]

    def live_keys(self) -> list[ApiKey]:
        """Keys gateways must accept: not revoked, of an account that is not suspended."""
        if self.account is None or self.account.status != "active":
            return []
        return [key for key in self.keys if key.revoked_at is None]

    def account_limits(self) -> UsageLimits | None:
        """The account's limits as gateways must see them: None when there are none to enforce
        (no limit set, or the account is suspended or gone, so its keys are refused anyway)."""
        if self.account is None or self.account.status != "active":
            return None
        return None if self.account.limits.is_empty() else self.account.limits


def limits_of(row: dict[str, Any]) -> UsageLimits:
    """The limits of a row selected with LIMIT_COLUMNS (taken out of the row)."""
    return UsageLimits(**{name: row.pop(name) for name in LIMIT_FIELDS})


def account_of_row(row: dict[str, Any]) -> Account:
    limits = limits_of(row)
    return Account(**row, limits=limits)


def api_key_of_row(row: dict[str, Any]) -> ApiKey:
    limits = limits_of(row)
    return ApiKey(**row, limits=limits)


def after_clause(columns: str, position: tuple[Any, ...] | None) -> tuple[str, tuple[Any, ...]]:
    """SQL condition and parameters of keyset pagination past `position` (nothing if None)."""
    if position is None:
        return "TRUE", ()
    placeholders = ", ".join(["%s"] * len(position))
    return f"({columns}) > ({placeholders})", position


class DashboardStore:
    def __init__(self, pool: AsyncConnectionPool, hasher: SecretHasher) -> None:
        self._pool = pool
        self._hasher = hasher

    # -- accounts -------------------------------------------------------------------------------
    async def create_account(self, name: str) -> Account:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                await cur.execute(
                    "INSERT INTO dashboard.accounts (account_id, name) VALUES (%s, %s)"
                    f" RETURNING {ACCOUNT_COLUMNS}",
                    (new_id("acct"), name),
                )
            except psycopg.errors.UniqueViolation:
                raise Conflict(f"An account named '{name}' already exists.", param="name") from None
            row = await cur.fetchone()
        assert row is not None
        return account_of_row(row)

    async def get_account(self, account_id: str) -> Account | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM dashboard.accounts WHERE account_id = %s",
                (account_id,),
            )
            row = await cur.fetchone()
        return account_of_row(row) if row else None

    async def list_accounts(
        self, fetch: int, after: tuple[datetime, str] | None, name: str | None = None
    ) -> list[Account]:
        condition, params = after_clause("created_at, account_id", after)
        if name is not None:
            condition += " AND name = %s"
            params = (*params, name)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM dashboard.accounts WHERE {condition}"
                " ORDER BY created_at, account_id LIMIT %s",
                (*params, fetch),
            )
            return [account_of_row(row) for row in await cur.fetchall()]

    async def limited_accounts(self) -> list[Account]:
        """Active accounts with at least one limit (to rebuild the projection)."""
        any_limit = " OR ".join(f"{name} IS NOT NULL" for name in LIMIT_FIELDS)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM dashboard.accounts"
                f" WHERE status = 'active' AND ({any_limit})"
            )
            return [account_of_row(row) for row in await cur.fetchall()]

    async def set_account_status(self, account_id: str, status: str) -> Account | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE dashboard.accounts SET status = %s WHERE account_id = %s"
                f" RETURNING {ACCOUNT_COLUMNS}",
                (status, account_id),
            )
            row = await cur.fetchone()
        return account_of_row(row) if row else None

    # -- API keys -------------------------------------------------------------------------------
    async def create_api_key(
        self, account_id: str, activations: list[str] | None = None
    ) -> tuple[ApiKey, str]:
        """Store a new key's hash; the plaintext is returned once and never stored."""
        secret = self._hasher.issue(API_KEY_PREFIX)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO dashboard.api_keys"
                " (key_id, account_id, key_hash, prefix, last_four, activations)"
                f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {KEY_COLUMNS}",
                (
                    new_id("key"),
                    account_id,
                    secret.secret_hash,
                    secret.prefix,
                    secret.last_four,
                    sorted(set(activations or [])),
                ),
            )
            row = await cur.fetchone()
        assert row is not None
        return api_key_of_row(row), secret.plaintext

    async def list_api_keys(
        self, account_id: str, fetch: int, after: tuple[datetime, str] | None
    ) -> list[ApiKey]:
        condition, params = after_clause("created_at, key_id", after)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {KEY_COLUMNS} FROM dashboard.api_keys"
                f" WHERE account_id = %s AND {condition} ORDER BY created_at, key_id LIMIT %s",
                (account_id, *params, fetch),
            )
            return [api_key_of_row(row) for row in await cur.fetchall()]

    async def get_api_key(self, account_id: str, key_id: str) -> ApiKey | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {KEY_COLUMNS} FROM dashboard.api_keys"
                " WHERE account_id = %s AND key_id = %s",
                (account_id, key_id),
            )
            row = await cur.fetchone()
        return api_key_of_row(row) if row else None

    async def revoke_api_key(self, account_id: str, key_id: str) -> ApiKey | None:
        """Revoke a key of this account (idempotent: the first revocation time is kept)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE dashboard.api_keys SET revoked_at = coalesce(revoked_at, now())"
                f" WHERE account_id = %s AND key_id = %s RETURNING {KEY_COLUMNS}",
                (account_id, key_id),
            )
            row = await cur.fetchone()
        return api_key_of_row(row) if row else None

    async def active_api_keys(self) -> list[ApiKey]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {KEY_COLUMNS} FROM dashboard.api_keys k WHERE revoked_at IS NULL"
                " AND EXISTS (SELECT 1 FROM dashboard.accounts a"
                "  WHERE a.account_id = k.account_id AND a.status = 'active')"
            )
            return [api_key_of_row(row) for row in await cur.fetchall()]

    @asynccontextmanager
    async def locked_account_keys(self, account_id: str) -> AsyncIterator[AccountKeys]:
        """The account's current keys and status, with a lock (across replicas) held until the
        block ends, so that concurrent projections of one account apply in commit order."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"keys:{account_id}",)
            )
            await cur.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM dashboard.accounts WHERE account_id = %s",
                (account_id,),
            )
            account_row = await cur.fetchone()
            await cur.execute(
                f"SELECT {KEY_COLUMNS} FROM dashboard.api_keys WHERE account_id = %s",
                (account_id,),
            )
            keys = [api_key_of_row(row) for row in await cur.fetchall()]
            yield AccountKeys(account_of_row(account_row) if account_row else None, keys)

    # -- activations ----------------------------------------------------------------------------
    async def upsert_activation(
        self,
        account_id: str,
        route: str,
        region: str,
        free_system_prompt: str,
        thinking_default_effort: str,
        thinking_reasoning_output: str,
    ) -> Activation:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO dashboard.activations (account_id, route, region, free_system_prompt,"
                " thinking_default_effort, thinking_reasoning_output)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (account_id, route, region) DO UPDATE"
                " SET free_system_prompt = EXCLUDED.free_system_prompt,"
                " thinking_default_effort = EXCLUDED.thinking_default_effort,"
                " thinking_reasoning_output = EXCLUDED.thinking_reasoning_output,"
                f" updated_at = now() RETURNING {ACTIVATION_COLUMNS}",
                (
                    account_id,
                    route,
                    region,
                    free_system_prompt,
                    thinking_default_effort,
                    thinking_reasoning_output,
                ),
            )
            row = await cur.fetchone()
        assert row is not None
        return Activation(**row)

    async def delete_activation(self, account_id: str, route: str, region: str) -> bool:
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "DELETE FROM dashboard.activations"
                " WHERE account_id = %s AND route = %s AND region = %s",
                (account_id, route, region),
            )
            return cur.rowcount > 0

    async def list_activations(
        self, account_id: str, fetch: int, after: tuple[str, ...] | None
    ) -> list[Activation]:
        condition, params = after_clause("route, region", after)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {ACTIVATION_COLUMNS} FROM dashboard.activations"
                f" WHERE account_id = %s AND {condition} ORDER BY route, region LIMIT %s",
                (account_id, *params, fetch),
            )
            return [Activation(**row) for row in await cur.fetchall()]

    async def activations(self) -> list[Activation]:
        """Every activation of every account (to rebuild the projection)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {ACTIVATION_COLUMNS} FROM dashboard.activations")
            return [Activation(**row) for row in await cur.fetchall()]

    @asynccontextmanager
    async def locked_activation(
        self, account_id: str, route: str, region: str
    ) -> AsyncIterator[Activation | None]:
        """The activation as committed now (None once cancelled), locked like
        `locked_account_keys`."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"activation:{account_id}:{route}:{region}",),
            )
            await cur.execute(
                f"SELECT {ACTIVATION_COLUMNS} FROM dashboard.activations"
                " WHERE account_id = %s AND route = %s AND region = %s",
                (account_id, route, region),
            )
            row = await cur.fetchone()
            yield Activation(**row) if row else None
