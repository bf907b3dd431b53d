"""Identifiers that cross service boundaries."""

from __future__ import annotations

import secrets
import uuid


def new_transaction_id() -> str:
    """The `x-transaction-id` of a request: also the billing idempotency key."""
    return f"txn-{uuid.uuid4().hex}"


def new_worker_id(country: str, route: str) -> str:
    return f"{country}-{route}-{secrets.token_hex(4)}"
