"""The statement and price RPCs of the Billing service: protobuf to `Statements` and back.
BillingService delegates these methods here, to keep each module to one job."""

from __future__ import annotations

from datetime import UTC, date, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from regio.billing.v1 import billing_pb2
from regio_billing.errors import require
from regio_billing.ledger import Ledger
from regio_billing.pricing import Prices
from regio_billing.statements import (
    PaymentLine,
    PriceVersion,
    Statements,
    TimeWindow,
    TransactionLine,
    UsagePosition,
)
from regio_common.errors import InvalidRequest


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _optional_time(message: object, field: str) -> datetime | None:
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def _window(request: object) -> TimeWindow:
    window = TimeWindow(_optional_time(request, "since"), _optional_time(request, "until"))
    if window.since is not None and window.until is not None:
        require(window.since < window.until, "since must be before until", "since")
    return window


def _time_position(request: object) -> tuple[datetime, int] | None:
    after = _optional_time(request, "after_created_at")
    return None if after is None else (after, request.after_id)  # type: ignore[attr-defined]


def transaction_message(line: TransactionLine) -> billing_pb2.Transaction:
    return billing_pb2.Transaction(
        id=line.id,
        kind=line.kind,
        amount_nano=line.amount_nano,
        balance_effect_nano=line.balance_effect_nano,
        reference=line.reference,
        memo=line.memo,
        route=line.route or "",
        region=line.region or "",
        prompt_tokens=line.prompt_tokens or 0,
        completion_tokens=line.completion_tokens or 0,
        created_at=_timestamp(line.created_at),
    )


def payment_message(line: PaymentLine) -> billing_pb2.Payment:
    message = billing_pb2.Payment(
        id=line.id,
        account_id=line.account_id,
        idempotency_key=line.idempotency_key,
        amount_nano=line.amount_nano,
        reference=line.reference,
        created_at=_timestamp(line.created_at),
        bonus_nano=line.bonus_nano,
        promotion=line.promotion or "",
        paid_remaining_nano=line.paid_remaining_nano,
        bonus_remaining_nano=line.bonus_remaining_nano,
        refunded=line.refunded_at is not None,
        refunded_nano=line.refunded_nano or 0,
        clawed_back_nano=line.clawed_back_nano or 0,
    )
    if line.refunded_at is not None:
        message.refunded_at.CopyFrom(_timestamp(line.refunded_at))
    return message


def price_message(version: PriceVersion) -> billing_pb2.RoutePrice:
    return billing_pb2.RoutePrice(
        version=version.version,
        route=version.route,
        input_price_nano=version.prices.input_price_nano,
        output_price_nano=version.prices.output_price_nano,
        valid_from=_timestamp(version.valid_from),
        current=version.current,
    )


class StatementRpcs:
    def __init__(self, statements: Statements) -> None:
        self._statements = statements

    @classmethod
    def for_ledger(cls, ledger: Ledger) -> StatementRpcs:
        # The servicer is built from the ledger alone (app.py): share its pool and catalogue.
        return cls(Statements(ledger._pool, ledger._catalogue.routes.keys()))

    async def list_transactions(
        self, request: billing_pb2.ListTransactionsRequest
    ) -> billing_pb2.ListTransactionsResponse:
        lines = await self._statements.transactions(
            request.account_id, _window(request), request.limit, _time_position(request)
        )
        return billing_pb2.ListTransactionsResponse(
            transactions=[transaction_message(line) for line in lines]
        )

    async def list_usage(
        self, request: billing_pb2.ListUsageRequest
    ) -> billing_pb2.ListUsageResponse:
        after = None
        if request.after_day:
            try:
                day = date.fromisoformat(request.after_day)
            except ValueError:
                raise InvalidRequest("after_day must be YYYY-MM-DD", param="after_day") from None
            after = UsagePosition(day, request.after_route, request.after_region)
        days = await self._statements.usage(
            request.account_id,
            _window(request),
            request.limit,
            route=request.route,
            region=request.region,
            after=after,
        )
        return billing_pb2.ListUsageResponse(
            usage=[
                billing_pb2.UsageDay(
                    day=row.day.isoformat(),
                    route=row.route,
                    region=row.region,
                    requests=row.requests,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    charged_nano=row.charged_nano,
                )
                for row in days
            ]
        )

    async def list_payments(
        self, request: billing_pb2.ListPaymentsRequest
    ) -> billing_pb2.ListPaymentsResponse:
        lines = await self._statements.payments(
            request.account_id, _window(request), request.limit, _time_position(request)
        )
        return billing_pb2.ListPaymentsResponse(payments=[payment_message(line) for line in lines])

    async def get_payment(self, request: billing_pb2.GetPaymentRequest) -> billing_pb2.Payment:
        return payment_message(
            await self._statements.payment(request.account_id, request.payment_id)
        )

    async def list_prices(
        self, request: billing_pb2.ListPricesRequest
    ) -> billing_pb2.ListPricesResponse:
        versions = await self._statements.prices(request.route, request.include_history)
        return billing_pb2.ListPricesResponse(prices=[price_message(v) for v in versions])

    async def set_route_price(
        self, request: billing_pb2.SetRoutePriceRequest
    ) -> billing_pb2.SetRoutePriceResponse:
        version, new = await self._statements.set_route_price(
            request.route,
            Prices(
                input_price_nano=request.input_price_nano,
                output_price_nano=request.output_price_nano,
            ),
        )
        return billing_pb2.SetRoutePriceResponse(price=price_message(version), new_version=new)
