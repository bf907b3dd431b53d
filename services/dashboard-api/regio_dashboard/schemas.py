"""Request bodies and response shapes of the dashboard API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from regio.billing.v1 import billing_pb2
from regio_common.money import nano_to_eur
from regio_common.validation import parse_body
from regio_dashboard.management_tokens import ManagementToken
from regio_dashboard.store import Account, Activation, ApiKey


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def parse(cls, payload: object) -> Any:
        return parse_body(cls, payload)


class CreateAccount(RequestBody):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")


class AddCredits(RequestBody):
    amount_eur: Decimal = Field(gt=0, le=1_000_000, decimal_places=9)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    reference: str = Field("", max_length=200)


class ActivationSettings(RequestBody):
    free_system_prompt: str = ""


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.account_id,
        "object": "account",
        "name": account.name,
        "status": account.status,
        "created": int(account.created_at.timestamp()),
    }


def _timestamp(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def api_key_json(key: ApiKey, plaintext: str | None = None) -> dict[str, Any]:
    """A key as listed: never its secret or hash (the secret only once, at creation)."""
    body: dict[str, Any] = {
        "id": key.key_id,
        "object": "api_key",
        "account_id": key.account_id,
        "prefix": key.prefix,
        "last_four": key.last_four,
        "status": "revoked" if key.revoked_at is not None else "active",
        "created": int(key.created_at.timestamp()),
        "revoked": _timestamp(key.revoked_at),
    }
    if plaintext is not None:
        body["key"] = plaintext  # shown once, at creation
    return body


def management_token_json(token: ManagementToken, plaintext: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": token.token_id,
        "object": "management_token",
        "account_id": token.account_id,
        "prefix": token.prefix,
        "last_four": token.last_four,
        "status": "revoked" if token.revoked_at is not None else "active",
        "created": int(token.created_at.timestamp()),
        "revoked": _timestamp(token.revoked_at),
    }
    if plaintext is not None:
        body["token"] = plaintext  # shown once, at creation
    return body


def activation_json(activation: Activation) -> dict[str, Any]:
    return {
        "object": "activation",
        "account_id": activation.account_id,
        "route": activation.route,
        "region": activation.region,
        "free_system_prompt": activation.free_system_prompt,
        "created": int(activation.created_at.timestamp()),
    }


def balance_json(balance: billing_pb2.Balance, account_id: str) -> dict[str, Any]:
    return {
        "object": "balance",
        "account_id": account_id,
        "balance_nano": balance.balance_nano,
        "held_nano": balance.held_nano,
        "available_nano": balance.available_nano,
        "balance_eur": str(nano_to_eur(balance.balance_nano)),
        "available_eur": str(nano_to_eur(balance.available_nano)),
    }
