"""PostgreSQL side of idempotency keys (see idempotency.py): claim, complete, release."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

# A first request that claimed a key but never finished (its process died) frees it after this.
STALE_CLAIM = "5 minutes"


@dataclass(frozen=True)
class StoredResponse:
    request_hash: str
    status: int | None  # None while the first request is still running
    body: str | None
    secret_withheld: bool


class IdempotencyStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def claim(self, scope: str, key: str, request_hash: str) -> StoredResponse | None:
        """Claim the key for this request (None), or what an earlier request left under it."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO dashboard.idempotency_keys (scope, idempotency_key, request_hash)"
                " VALUES (%s, %s, %s) ON CONFLICT (scope, idempotency_key) DO UPDATE"
                " SET request_hash = EXCLUDED.request_hash, created_at = now()"
                " WHERE idempotency_keys.status IS NULL"
                f" AND idempotency_keys.created_at < now() - interval '{STALE_CLAIM}'"
                " RETURNING scope",
                (scope, key, request_hash),
            )
            if await cur.fetchone() is not None:
                return None
            await cur.execute(
                "SELECT request_hash, status, response_body AS body, secret_withheld"
                " FROM dashboard.idempotency_keys WHERE scope = %s AND idempotency_key = %s",
                (scope, key),
            )
            row = await cur.fetchone()
        if row is None:  # freed between the two statements: treat as still running
            return StoredResponse(request_hash, None, None, False)
        return StoredResponse(**row)

    async def complete(
        self, scope: str, key: str, status: int, body: str, secret_withheld: bool
    ) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE dashboard.idempotency_keys"
                " SET status = %s, response_body = %s, secret_withheld = %s"
                " WHERE scope = %s AND idempotency_key = %s",
                (status, body, secret_withheld, scope, key),
            )

    async def release(self, scope: str, key: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "DELETE FROM dashboard.idempotency_keys"
                " WHERE scope = %s AND idempotency_key = %s AND status IS NULL",
                (scope, key),
            )
