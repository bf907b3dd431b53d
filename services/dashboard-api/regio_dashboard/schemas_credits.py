"""Request bodies and response shapes of credits (transactions, usage, payments, refunds,
promotions) and of the route catalogue with its prices. Amounts come in nano-EUR (exact) and
as decimal EUR strings (for people)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import AwareDatetime, Field

from regio.billing.v1 import billing_pb2
from regio_common.catalogue import Capabilities, Route
from regio_common.money import nano_to_eur
from regio_dashboard.schemas import BalanceOut, ListOf, RequestBody, ResponseModel

# Per 1M tokens: a route may be free, but never costs more than €1,000 per 1M tokens.
MAX_PRICE_EUR_PER_MTOK = 1000


def eur(nano: int) -> str:
    """Plain decimal notation, never an exponent (5 nano-EUR is "0.000000005")."""
    return f"{nano_to_eur(nano):f}"


def unix(stamp: Timestamp) -> int:
    return stamp.seconds


def moment(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


# -- requests -------------------------------------------------------------------------------------
class CreatePromotion(RequestBody):
    name: str = Field(min_length=1, max_length=100, description="Unique name of the campaign.")
    min_payment_eur: Decimal = Field(gt=0, le=1_000_000, decimal_places=9)
    bonus_percent: int = Field(ge=1, le=1000, description="Bonus credit, percent of a payment.")
    starts_at: AwareDatetime = Field(description="Payments from this time (inclusive) qualify.")
    ends_at: AwareDatetime = Field(description="...until this time (exclusive).")


class SetRoutePrice(RequestBody):
    input_price_eur_per_mtok: Decimal = Field(ge=0, le=MAX_PRICE_EUR_PER_MTOK, decimal_places=9)
    output_price_eur_per_mtok: Decimal = Field(ge=0, le=MAX_PRICE_EUR_PER_MTOK, decimal_places=9)


# -- responses ------------------------------------------------------------------------------------
class TransactionOut(ResponseModel):
    id: str = Field(description="The journal entry.")
    object: Literal["transaction"] = "transaction"
    account_id: str
    kind: str = Field(
        description="payment, charge, promotion (a bonus), refund, clawback (of a bonus), "
        "adjustment (by an admin)."
    )
    amount_nano: int
    amount_eur: str
    balance_effect_nano: int = Field(description="Signed change of the balance.")
    balance_effect_eur: str
    reference: str = Field(
        description="A charge's transaction id (x-transaction-id); the payment's key otherwise."
    )
    memo: str
    route: str | None = Field(description="Charges: the activation's route.")
    region: str | None = Field(description="Charges: the activation's region.")
    prompt_tokens: int | None
    completion_tokens: int | None
    created: int

    @classmethod
    def of(cls, account_id: str, entry: billing_pb2.Transaction) -> TransactionOut:
        charge = entry.kind == "charge"
        return cls(
            id=str(entry.id),
            account_id=account_id,
            kind=entry.kind,
            amount_nano=entry.amount_nano,
            amount_eur=eur(entry.amount_nano),
            balance_effect_nano=entry.balance_effect_nano,
            balance_effect_eur=eur(entry.balance_effect_nano),
            reference=entry.reference,
            memo=entry.memo,
            route=entry.route or None,
            region=entry.region or None,
            prompt_tokens=entry.prompt_tokens if charge else None,
            completion_tokens=entry.completion_tokens if charge else None,
            created=unix(entry.created_at),
        )


class TransactionList(ListOf[TransactionOut]):
    pass


class UsageOut(ResponseModel):
    object: Literal["usage"] = "usage"
    account_id: str
    day: str = Field(description="UTC day, YYYY-MM-DD.")
    route: str
    region: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    charged_nano: int
    charged_eur: str

    @classmethod
    def of(cls, account_id: str, day: billing_pb2.UsageDay) -> UsageOut:
        return cls(
            account_id=account_id,
            day=day.day,
            route=day.route,
            region=day.region,
            requests=day.requests,
            prompt_tokens=day.prompt_tokens,
            completion_tokens=day.completion_tokens,
            total_tokens=day.prompt_tokens + day.completion_tokens,
            charged_nano=day.charged_nano,
            charged_eur=eur(day.charged_nano),
        )


class UsageList(ListOf[UsageOut]):
    pass


class PaymentOut(ResponseModel):
    id: str
    object: Literal["payment"] = "payment"
    account_id: str
    idempotency_key: str
    amount_nano: int
    amount_eur: str
    reference: str
    created: int
    bonus_nano: int = Field(description="Promotional credit this payment earned (0: none).")
    bonus_eur: str
    promotion: str | None = Field(description="The promotion that granted the bonus.")
    paid_remaining_nano: int = Field(description="Unused part of the payment.")
    bonus_remaining_nano: int = Field(description="Unused part of its bonus.")
    status: Literal["paid", "refunded"]
    refunded_nano: int
    clawed_back_nano: int = Field(description="Unused bonus taken back by the refund.")
    refunded: int | None = Field(description="When it was refunded.")

    @classmethod
    def of(cls, payment: billing_pb2.Payment) -> PaymentOut:
        return cls(
            id=str(payment.id),
            account_id=payment.account_id,
            idempotency_key=payment.idempotency_key,
            amount_nano=payment.amount_nano,
            amount_eur=eur(payment.amount_nano),
            reference=payment.reference,
            created=unix(payment.created_at),
            bonus_nano=payment.bonus_nano,
            bonus_eur=eur(payment.bonus_nano),
            promotion=payment.promotion or None,
            paid_remaining_nano=payment.paid_remaining_nano,
            bonus_remaining_nano=payment.bonus_remaining_nano,
            status="refunded" if payment.refunded else "paid",
            refunded_nano=payment.refunded_nano,
            clawed_back_nano=payment.clawed_back_nano,
            refunded=unix(payment.refunded_at) if payment.refunded else None,
        )


class PaymentList(ListOf[PaymentOut]):
    pass


class RefundOut(ResponseModel):
    object: Literal["refund"] = "refund"
    payment_id: str
    account_id: str
    refunded_nano: int = Field(description="Unused paid credit returned to the payer.")
    refunded_eur: str
    clawed_back_nano: int = Field(description="Unused bonus of the payment taken back.")
    clawed_back_eur: str
    already_refunded: bool = Field(description="A repeat: the amounts of the first refund.")
    balance: BalanceOut


class PromotionOut(ResponseModel):
    id: str
    object: Literal["promotion"] = "promotion"
    name: str
    min_payment_nano: int
    min_payment_eur: str
    bonus_percent: int
    starts_at: int
    ends_at: int

    @classmethod
    def of(cls, promotion: billing_pb2.Promotion) -> PromotionOut:
        return cls(
            id=str(promotion.id),
            name=promotion.name,
            min_payment_nano=promotion.min_payment_nano,
            min_payment_eur=eur(promotion.min_payment_nano),
            bonus_percent=promotion.bonus_percent,
            starts_at=unix(promotion.starts_at),
            ends_at=unix(promotion.ends_at),
        )


class PromotionList(ListOf[PromotionOut]):
    pass


class RoutePriceOut(ResponseModel):
    object: Literal["route_price"] = "route_price"
    route: str
    version: str = Field(description="Price version; a change is a new version, effective now.")
    input_price_nano: int = Field(description="nano-EUR per 1M input tokens.")
    output_price_nano: int = Field(description="nano-EUR per 1M output tokens.")
    input_price_eur_per_mtok: str
    output_price_eur_per_mtok: str
    valid_from: int

    @classmethod
    def of(cls, price: billing_pb2.RoutePrice) -> RoutePriceOut:
        return cls(
            route=price.route,
            version=str(price.version),
            input_price_nano=price.input_price_nano,
            output_price_nano=price.output_price_nano,
            input_price_eur_per_mtok=eur(price.input_price_nano),
            output_price_eur_per_mtok=eur(price.output_price_nano),
            valid_from=unix(price.valid_from),
        )


class RoutePriceChange(RoutePriceOut):
    new_version: bool = Field(description="False when the route already had this price.")


class ModelSourceOut(ResponseModel):
    gguf_path: str | None
    gguf_package: str | None


class CatalogueRouteOut(ResponseModel):
    object: Literal["route"] = "route"
    name: str
    base_models: list[str]
    source: ModelSourceOut | None = Field(
        description="Where workers find the GGUF (admin only; null for an account owner)."
    )
    context_length: int
    max_output_tokens: int
    default_max_tokens: int
    capabilities: Capabilities
    supported_parameters: list[str]
    regions: list[str] = Field(description="Regions the route can be ordered in.")
    price: RoutePriceOut | None = Field(description="Current price (null until billing has one).")

    @classmethod
    def of(
        cls, route: Route, price: billing_pb2.RoutePrice | None, with_source: bool
    ) -> CatalogueRouteOut:
        source = None
        if with_source:
            path = route.source.gguf_path
            source = ModelSourceOut(
                gguf_path=str(path) if path is not None else None,
                gguf_package=route.source.gguf_package,
            )
        return cls(
            name=route.name,
            base_models=route.base_models,
            source=source,
            context_length=route.context_length,
            max_output_tokens=route.max_output_tokens,
            default_max_tokens=route.default_max_tokens,
            capabilities=route.capabilities,
            supported_parameters=route.supported_parameters,
            regions=route.regions,
            price=RoutePriceOut.of(price) if price is not None else None,
        )


class CatalogueList(ListOf[CatalogueRouteOut]):
    pass
