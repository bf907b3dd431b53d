"""Request bodies and response shapes of the dashboard API (the OpenAPI document is built from
these models, so what is served and what is described cannot drift apart)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from regio.billing.v1 import billing_pb2
from regio_common.config_records import (
    ReasoningOutput,
    ThinkingEffort,
    ThinkingSettings,
    UsageLimits,
)
from regio_common.money import eur_to_nano, nano_to_eur
from regio_common.validation import parse_body
from regio_dashboard.management_tokens import ManagementToken
from regio_dashboard.store import Account, Activation, ApiKey

ACTIVATION_REF = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
# Counted limits fit PostgreSQL's integer (and billing's uint32); a spend cap of at most
# €1,000,000,000 fits a bigint of nano-EUR.
MAX_LIMIT_COUNT = 2**31 - 1
MAX_SPEND_CAP_EUR = 1_000_000_000


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def parse(cls, payload: object) -> Any:
        return parse_body(cls, payload)


class CreateAccount(RequestBody):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")


class AddCredits(RequestBody):
    amount_eur: Decimal = Field(gt=0, le=1_000_000, decimal_places=9)
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Billing's payment key; the Idempotency-Key header is used when absent.",
    )
    reference: str = Field("", max_length=200)


class ThinkingSettingsBody(RequestBody):
    default_effort: ThinkingEffort = "medium"
    reasoning_output: ReasoningOutput = Field(
        "reasoning_content",
        description="Reasoning as a `reasoning_content` field, inline `<think>` tags, or hidden.",
    )


class ActivationSettings(RequestBody):
    free_system_prompt: str = Field(
        "", description="Prepended to every request, never billed; at most 1,024 characters."
    )
    thinking: ThinkingSettingsBody = ThinkingSettingsBody()


class CreateApiKey(RequestBody):
    activations: list[Annotated[str, Field(pattern=ACTIVATION_REF, max_length=200)]] = Field(
        [],
        max_length=100,
        description="Activations ('route/region') the key may use; empty means all of them.",
    )


def _count_limit(what: str) -> Any:
    return Field(
        None, ge=1, le=MAX_LIMIT_COUNT, strict=True, description=f"{what}; null: no limit."
    )


def _spend_cap(window: str) -> Any:
    return Field(
        None,
        gt=0,
        le=MAX_SPEND_CAP_EUR,
        decimal_places=9,
        description=f"EUR charged plus held per UTC {window}, as a decimal string; null: no cap.",
    )


class UsageLimitsBody(RequestBody):
    """Every limit of an account or a key: a PUT replaces all of them (an omitted field is
    null, i.e. no limit)."""

    requests_per_minute: int | None = _count_limit("Requests admitted per UTC minute")
    tokens_per_minute: int | None = _count_limit(
        "Prompt + completion tokens (of settled usage) per UTC minute"
    )
    max_concurrent_requests: int | None = _count_limit("Requests in flight at once")
    daily_spend_cap_eur: Decimal | None = _spend_cap("day")
    monthly_spend_cap_eur: Decimal | None = _spend_cap("calendar month")

    def usage_limits(self) -> UsageLimits:
        """The limits as stored and enforced: spend caps in nano-EUR."""
        return UsageLimits(
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrent_requests=self.max_concurrent_requests,
            daily_spend_cap_nano=_optional_nano(self.daily_spend_cap_eur),
            monthly_spend_cap_nano=_optional_nano(self.monthly_spend_cap_eur),
        )


def _optional_nano(eur: Decimal | None) -> int | None:
    return None if eur is None else eur_to_nano(eur)


class CreateAdjustment(RequestBody):
    amount_eur: Decimal = Field(
        ge=-1_000_000,
        le=1_000_000,
        decimal_places=9,
        description="Credit added (positive) or taken (negative); never overdraws.",
    )
    reason: str = Field(min_length=1, max_length=500, description="Why (kept in the audit log).")


# -- responses ------------------------------------------------------------------------------------
class ResponseModel(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class ErrorDetail(ResponseModel):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorEnvelope(ResponseModel):
    error: ErrorDetail


class Health(ResponseModel):
    status: Literal["ok", "unavailable"]


class AccountOut(ResponseModel):
    id: str
    object: Literal["account"] = "account"
    name: str
    status: Literal["active", "suspended"]
    created: int

    @classmethod
    def of(cls, account: Account) -> AccountOut:
        return cls(
            id=account.account_id,
            name=account.name,
            status=account.status,  # type: ignore[arg-type]
            created=_timestamp(account.created_at),
        )


def eur_text(nano: int) -> str:
    """Plain decimal notation, never an exponent (5 nano-EUR is "0.000000005")."""
    return f"{nano_to_eur(nano):f}"


class UsageLimitsOut(ResponseModel):
    """Limits as set (null: no limit); spend caps as decimal EUR strings."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent_requests: int | None
    daily_spend_cap_eur: str | None
    monthly_spend_cap_eur: str | None

    @classmethod
    def fields_of(cls, limits: UsageLimits) -> dict[str, Any]:
        return {
            "requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
            "max_concurrent_requests": limits.max_concurrent_requests,
            "daily_spend_cap_eur": _optional_eur(limits.daily_spend_cap_nano),
            "monthly_spend_cap_eur": _optional_eur(limits.monthly_spend_cap_nano),
        }

    @classmethod
    def of(cls, limits: UsageLimits) -> UsageLimitsOut:
        return cls(**cls.fields_of(limits))


def _optional_eur(nano: int | None) -> str | None:
    return None if nano is None else eur_text(nano)


class LimitsOut(UsageLimitsOut):
    """The limits of an account (`key_id` null) or of one of its keys."""

    object: Literal["usage_limits"] = "usage_limits"
    scope: Literal["account", "key"]
    account_id: str
    key_id: str | None

    @classmethod
    def of_account(cls, account_id: str, limits: UsageLimits) -> LimitsOut:
        return cls(scope="account", account_id=account_id, key_id=None, **cls.fields_of(limits))

    @classmethod
    def of_key(cls, account_id: str, key_id: str, limits: UsageLimits) -> LimitsOut:
        return cls(scope="key", account_id=account_id, key_id=key_id, **cls.fields_of(limits))


class ApiKeyOut(ResponseModel):
    """A key as listed: never its secret or hash."""

    id: str
    object: Literal["api_key"] = "api_key"
    account_id: str
    prefix: str
    last_four: str
    activations: list[str]
    status: Literal["active", "revoked"]
    created: int
    revoked: int | None
    limits: UsageLimitsOut

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyOut:
        return cls(
            id=key.key_id,
            account_id=key.account_id,
            prefix=key.prefix,
            last_four=key.last_four,
            activations=list(key.activations),
            status="revoked" if key.revoked_at is not None else "active",
            created=_timestamp(key.created_at),
            revoked=_optional_timestamp(key.revoked_at),
            limits=UsageLimitsOut.of(key.limits),
        )


class CreatedApiKey(ApiKeyOut):
    key: str = Field(description="The secret, shown only in this response.")


class ManagementTokenOut(ResponseModel):
    id: str
    object: Literal["management_token"] = "management_token"
    account_id: str
    prefix: str
    last_four: str
    status: Literal["active", "revoked"]
    created: int
    revoked: int | None

    @classmethod
    def of(cls, token: ManagementToken) -> ManagementTokenOut:
        return cls(
            id=token.token_id,
            account_id=token.account_id,
            prefix=token.prefix,
            last_four=token.last_four,
            status="revoked" if token.revoked_at is not None else "active",
            created=_timestamp(token.created_at),
            revoked=_optional_timestamp(token.revoked_at),
        )


class CreatedManagementToken(ManagementTokenOut):
    token: str = Field(description="The secret, shown only in this response.")


class ActivationOut(ResponseModel):
    object: Literal["activation"] = "activation"
    account_id: str
    route: str
    region: str
    free_system_prompt: str
    thinking: ThinkingSettings
    created: int

    @classmethod
    def of(cls, activation: Activation) -> ActivationOut:
        return cls(
            account_id=activation.account_id,
            route=activation.route,
            region=activation.region,
            free_system_prompt=activation.free_system_prompt,
            thinking=ThinkingSettings.model_validate(
                {
                    "default_effort": activation.thinking_default_effort,
                    "reasoning_output": activation.thinking_reasoning_output,
                }
            ),
            created=_timestamp(activation.created_at),
        )


class CancelledActivation(ResponseModel):
    object: Literal["activation"] = "activation"
    account_id: str
    route: str
    region: str
    deleted: Literal[True] = True


class BalanceOut(ResponseModel):
    object: Literal["balance"] = "balance"
    account_id: str
    balance_nano: int
    held_nano: int
    available_nano: int
    balance_eur: str
    available_eur: str

    @classmethod
    def of(cls, balance: billing_pb2.Balance, account_id: str) -> BalanceOut:
        return cls(
            account_id=account_id,
            balance_nano=balance.balance_nano,
            held_nano=balance.held_nano,
            available_nano=balance.available_nano,
            balance_eur=str(nano_to_eur(balance.balance_nano)),
            available_eur=str(nano_to_eur(balance.available_nano)),
        )


class AuditEntryOut(ResponseModel):
    id: str
    object: Literal["audit_entry"] = "audit_entry"
    actor: str = Field(
        description="Label of the admin credential that acted, or `owner:<account_id>` for an "
        "account owner's management token."
    )
    action: str = Field(
        description="credit_adjustment, account_limits_set or key_limits_set (the new limits "
        "are in `reason`)."
    )
    account_id: str
    amount_nano: int
    amount_eur: str
    reason: str
    outcome: Literal["pending", "applied", "refused"]
    created: int


class AdjustmentOut(ResponseModel):
    object: Literal["adjustment"] = "adjustment"
    audit_entry: AuditEntryOut
    balance: BalanceOut


Item = TypeVar("Item", bound=BaseModel)


class ListOf(ResponseModel, Generic[Item]):
    """A page of a cursor-paged list: pass `next_cursor` back as `after` for the next page."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool
    next_cursor: str | None


class AccountList(ListOf[AccountOut]):
    pass


class ApiKeyList(ListOf[ApiKeyOut]):
    pass


class ManagementTokenList(ListOf[ManagementTokenOut]):
    pass


class ActivationList(ListOf[ActivationOut]):
    pass


class AuditList(ListOf[AuditEntryOut]):
    pass


def _timestamp(moment: datetime) -> int:
    return int(moment.timestamp())


def _optional_timestamp(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None
