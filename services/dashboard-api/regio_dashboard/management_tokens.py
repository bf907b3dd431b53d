"""PostgreSQL access to account-owner management tokens (hashes only; see credentials.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from regio_dashboard.credentials import MANAGEMENT_TOKEN_PREFIX, SecretHasher, new_id
from regio_dashboard.store import after_clause

TOKEN_COLUMNS = "token_id, account_id, prefix, last_four, created_at, revoked_at"


@dataclass(frozen=True)
class ManagementToken:
    token_id: str
    account_id: str
    prefix: str
    last_four: str
    created_at: datetime
    revoked_at: datetime | None


class ManagementTokenStore:
    def __init__(self, pool: AsyncConnectionPool, hasher: SecretHasher) -> None:
        self._pool = pool
        self._hasher = hasher

    async def create(self, account_id: str) -> tuple[ManagementToken, str]:
        """Store a new token's hash; the plaintext is returned once and never stored."""
        secret = self._hasher.issue(MANAGEMENT_TOKEN_PREFIX)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO dashboard.management_tokens"
                " (token_id, account_id, token_hash, prefix, last_four)"
                f" VALUES (%s, %s, %s, %s, %s) RETURNING {TOKEN_COLUMNS}",
                (new_id("mgt"), account_id, secret.secret_hash, secret.prefix, secret.last_four),
            )
            row = await cur.fetchone()
        assert row is not None
        return ManagementToken(**row), secret.plaintext

    async def account_of(self, plaintext: str) -> str | None:
        """The account a live management token belongs to, or None."""
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT account_id FROM dashboard.management_tokens"
                " WHERE token_hash = %s AND revoked_at IS NULL",
                (self._hasher.hash(plaintext),),
            )
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def list_tokens(
        self, account_id: str, fetch: int, after: tuple[datetime, str] | None
    ) -> list[ManagementToken]:
        condition, params = after_clause("created_at, token_id", after)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {TOKEN_COLUMNS} FROM dashboard.management_tokens"
                f" WHERE account_id = %s AND {condition} ORDER BY created_at, token_id LIMIT %s",
                (account_id, *params, fetch),
            )
            return [ManagementToken(**row) for row in await cur.fetchall()]

    async def revoke(self, account_id: str, token_id: str) -> ManagementToken | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE dashboard.management_tokens SET revoked_at = coalesce(revoked_at, now())"
                f" WHERE account_id = %s AND token_id = %s RETURNING {TOKEN_COLUMNS}",
                (account_id, token_id),
            )
            row = await cur.fetchone()
        return ManagementToken(**row) if row else None
