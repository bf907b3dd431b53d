"""Identifiers that cross service boundaries."""

from __future__ import annotations

import secrets


def new_transaction_id() -> str:
    """The `x-transaction-id` of a request: also the billing idempotency key. 128 random bits
    as 32 hex digits (the shape of a uuid4's hex, without building a UUID object per request)."""
    return f"txn-{secrets.token_hex(16)}"


def new_worker_id(country: str, route: str) -> str:
    return f"{country}-{route}-{secrets.token_hex(4)}"
