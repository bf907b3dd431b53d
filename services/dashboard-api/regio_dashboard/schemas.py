"""Request bodies and response shapes of the dashboard API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from regio.billing.v1 import billing_pb2
from regio_common.money import nano_to_eur
from regio_common.validation import parse_body
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


def api_key_json(key: ApiKey, plaintext: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": key.key_id,
        "object": "api_key",
        "account_id": key.account_id,
        "prefix": key.prefix,
        "last_four": key.last_four,
        "created": int(key.created_at.timestamp()),
    }
    if plaintext is not None:
        body["key"] = plaintext  # shown once, at creation
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
