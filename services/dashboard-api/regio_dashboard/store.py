"""PostgreSQL access of the dashboard: the source of truth for accounts, keys and activations."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg.errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from regio_common.config_records import hash_api_key
from regio_common.errors import Conflict

API_KEY_PREFIX = "rg-"


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    status: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    account_id: str
    key_hash: str
    prefix: str
    last_four: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Activation:
    account_id: str
    route: str
    region: str
    free_system_prompt: str
    created_at: datetime


def new_api_key() -> str:
    """A 256-bit random secret, recognisable by its prefix (e.g. for secret scanners)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


class DashboardStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create_account(self, name: str) -> Account:
        account_id = f"acct_{secrets.token_hex(8)}"
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                await cur.execute(
                    "INSERT INTO dashboard.accounts (account_id, name) VALUES (%s, %s)"
                    " RETURNING account_id, name, status, created_at",
                    (account_id, name),
                )
            except psycopg.errors.UniqueViolation:
                raise Conflict(f"An account named '{name}' already exists.", param="name") from None
            row = await cur.fetchone()
        assert row is not None
        return Account(**row)

    async def get_account(self, account_id: str) -> Account | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT account_id, name, status, created_at FROM dashboard.accounts"
                " WHERE account_id = %s",
                (account_id,),
            )
            row = await cur.fetchone()
        return Account(**row) if row else None

    async def list_accounts(self, name: str | None = None) -> list[Account]:
        query = "SELECT account_id, name, status, created_at FROM dashboard.accounts"
        params: tuple[str, ...] = ()
        if name is not None:
            query += " WHERE name = %s"
            params = (name,)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query + " ORDER BY created_at", params)
            return [Account(**row) for row in await cur.fetchall()]

    async def create_api_key(self, account_id: str) -> tuple[ApiKey, str]:
        """Store a new key's hash; the plaintext is returned once and never stored."""
        plaintext = new_api_key()
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO dashboard.api_keys"
                " (key_id, account_id, key_hash, prefix, last_four) VALUES (%s, %s, %s, %s, %s)"
                " RETURNING key_id, account_id, key_hash, prefix, last_four, created_at,"
                " revoked_at",
                (
                    f"key_{secrets.token_hex(8)}",
                    account_id,
                    hash_api_key(plaintext),
                    plaintext[: len(API_KEY_PREFIX) + 4],
                    plaintext[-4:],
                ),
            )
            row = await cur.fetchone()
        assert row is not None
        return ApiKey(**row), plaintext

    async def active_api_keys(self) -> list[ApiKey]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT key_id, account_id, key_hash, prefix, last_four, created_at, revoked_at"
                " FROM dashboard.api_keys k WHERE revoked_at IS NULL AND EXISTS ("
                "  SELECT 1 FROM dashboard.accounts a"
                "  WHERE a.account_id = k.account_id AND a.status = 'active')"
            )
            return [ApiKey(**row) for row in await cur.fetchall()]

    async def upsert_activation(
        self, account_id: str, route: str, region: str, free_system_prompt: str
    ) -> Activation:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO dashboard.activations (account_id, route, region, free_system_prompt)"
                " VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (account_id, route, region) DO UPDATE"
                " SET free_system_prompt = EXCLUDED.free_system_prompt, updated_at = now()"
                " RETURNING account_id, route, region, free_system_prompt, created_at",
                (account_id, route, region, free_system_prompt),
            )
            row = await cur.fetchone()
        assert row is not None
        return Activation(**row)

    async def activations(self, account_id: str | None = None) -> list[Activation]:
        query = (
            "SELECT account_id, route, region, free_system_prompt, created_at"
            " FROM dashboard.activations"
        )
        params: tuple[str, ...] = ()
        if account_id is not None:
            query += " WHERE account_id = %s"
            params = (account_id,)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query + " ORDER BY route, region", params)
            return [Activation(**row) for row in await cur.fetchall()]
