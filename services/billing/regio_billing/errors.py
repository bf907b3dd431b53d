"""Billing's domain errors, built on the shared hierarchy so that every service maps them alike."""

from __future__ import annotations

from regio_common.errors import Conflict, InvalidRequest, NotFound


class HoldNotFound(NotFound):
    """Settle named a transaction that never reserved credit."""

    default_code = "hold_not_found"


class PaymentNotFound(NotFound):
    """RefundPayment named an idempotency key that no payment used."""

    default_code = "payment_not_found"


class IdempotencyConflict(Conflict):
    """An idempotency key (transaction id or payment key) was reused for a different request."""

    default_code = "idempotency_conflict"


def require(condition: bool, message: str, param: str) -> None:
    """Raise InvalidRequest unless `condition` holds (argument checks at the ledger's edge)."""
    if not condition:
        raise InvalidRequest(message, param=param)
