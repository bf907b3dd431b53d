"""The Billing gRPC service: translates protobuf to ledger calls and back, nothing more.
Errors are mapped to status codes by interceptors.DomainErrorInterceptor."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from regio.billing.v1 import billing_pb2, billing_pb2_grpc
from regio_billing.adjustments import adjust_credits
from regio_billing.errors import IdempotencyConflict, require
from regio_billing.ledger import Ledger
from regio_billing.metrics import BillingMetrics
from regio_billing.promotions import Promotion
from regio_billing.results import BalanceSnapshot, ReserveOutcome, ReserveResult
from regio_billing.statements_rpc import StatementRpcs
from regio_billing.usage_limits import LimitKind, ScopeKind, UsageLimits
from regio_common.errors import InvalidRequest

log = structlog.get_logger()

OUTCOME_TO_PROTO = {
    ReserveOutcome.HELD: billing_pb2.RESERVE_OUTCOME_HELD,
    ReserveOutcome.INSUFFICIENT_FUNDS: billing_pb2.RESERVE_OUTCOME_INSUFFICIENT_FUNDS,
    ReserveOutcome.UNKNOWN_ROUTE: billing_pb2.RESERVE_OUTCOME_UNKNOWN_ROUTE,
    ReserveOutcome.LIMITED: billing_pb2.RESERVE_OUTCOME_LIMITED,
}
# Reserve refusals by reason (regio_billing_reserve_refusals_total): outcomes and errors; a
# LIMITED reserve counts as `limit_<kind>`, e.g. limit_requests_per_minute.
REFUSAL_REASONS = {
    ReserveOutcome.INSUFFICIENT_FUNDS: "insufficient_budget",
    ReserveOutcome.UNKNOWN_ROUTE: "unknown_route",
}
LIMIT_KIND_TO_PROTO = {
    LimitKind.REQUESTS_PER_MINUTE: billing_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE,
    LimitKind.TOKENS_PER_MINUTE: billing_pb2.LIMIT_KIND_TOKENS_PER_MINUTE,
    LimitKind.CONCURRENT_REQUESTS: billing_pb2.LIMIT_KIND_CONCURRENT_REQUESTS,
    LimitKind.DAILY_SPEND: billing_pb2.LIMIT_KIND_DAILY_SPEND,
    LimitKind.MONTHLY_SPEND: billing_pb2.LIMIT_KIND_MONTHLY_SPEND,
}
SCOPE_TO_PROTO = {
    ScopeKind.KEY: billing_pb2.LIMIT_SCOPE_KEY,
    ScopeKind.ACCOUNT: billing_pb2.LIMIT_SCOPE_ACCOUNT,
}


def limit_refusal_reason(kind: LimitKind) -> str:
    return f"limit_{kind.value}"


def usage_limits(message: billing_pb2.UsageLimits) -> UsageLimits:
    return UsageLimits(
        requests_per_minute=message.requests_per_minute,
        tokens_per_minute=message.tokens_per_minute,
        max_concurrent_requests=message.max_concurrent_requests,
        daily_spend_cap_nano=message.daily_spend_cap_nano,
        monthly_spend_cap_nano=message.monthly_spend_cap_nano,
    )


def reserve_response(result: ReserveResult) -> billing_pb2.ReserveResponse:
    response = billing_pb2.ReserveResponse(
        outcome=OUTCOME_TO_PROTO[result.outcome],
        held_nano=result.held_nano,
        available_nano=result.available_nano,
    )
    if result.limit is not None:
        response.limit.CopyFrom(
            billing_pb2.LimitExceeded(
                kind=LIMIT_KIND_TO_PROTO[result.limit.kind],
                scope=SCOPE_TO_PROTO[result.limit.scope],
                limit=result.limit.limit,
                used=result.limit.used,
                retry_after_ms=result.limit.retry_after_ms,
            )
        )
    if result.headroom is not None:
        room = result.headroom
        response.headroom.CopyFrom(
            billing_pb2.RateLimitHeadroom(
                limit_requests=room.limit_requests,
                remaining_requests=room.remaining_requests,
                reset_requests_ms=room.reset_requests_ms,
                limit_tokens=room.limit_tokens,
                remaining_tokens=room.remaining_tokens,
                reset_tokens_ms=room.reset_tokens_ms,
            )
        )
    return response


def balance_message(snapshot: BalanceSnapshot) -> billing_pb2.Balance:
    return billing_pb2.Balance(
        account_id=snapshot.account_id,
        balance_nano=snapshot.balance_nano,
        held_nano=snapshot.held_nano,
        available_nano=snapshot.available_nano,
    )


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def promotion_message(promotion: Promotion) -> billing_pb2.Promotion:
    return billing_pb2.Promotion(
        id=promotion.id,
        name=promotion.name,
        min_payment_nano=promotion.min_payment_nano,
        bonus_percent=promotion.bonus_percent,
        starts_at=_timestamp(promotion.starts_at),
        ends_at=_timestamp(promotion.ends_at),
    )


class BillingService(billing_pb2_grpc.BillingServicer):
    def __init__(self, ledger: Ledger, metrics: BillingMetrics | None = None) -> None:
        self._ledger = ledger
        self._metrics = metrics or BillingMetrics()
        limit_reasons = [limit_refusal_reason(kind) for kind in LimitKind]
        for reason in (*REFUSAL_REASONS.values(), *limit_reasons, "invalid", "conflict"):
            self._metrics.reserve_refusals.labels(reason)  # zero until the first refusal
        self._statements = StatementRpcs.for_ledger(ledger)

    async def Reserve(
        self, request: billing_pb2.ReserveRequest, context: Any
    ) -> billing_pb2.ReserveResponse:
        try:
            result = await self._ledger.reserve(
                transaction_id=request.transaction_id,
                account_id=request.account_id,
                route=request.route,
                region=request.region,
                max_prompt_tokens=request.max_prompt_tokens,
                max_completion_tokens=request.max_completion_tokens,
                ttl_seconds=request.ttl_seconds,
                key_id=request.key_id,
                key_limits=usage_limits(request.key_limits),
                account_limits=usage_limits(request.account_limits),
            )
        except (InvalidRequest, IdempotencyConflict) as error:
            reason = "conflict" if isinstance(error, IdempotencyConflict) else "invalid"
            self._metrics.reserve_refusals.labels(reason).inc()
            raise
        if result.outcome in REFUSAL_REASONS:
            self._metrics.reserve_refusals.labels(REFUSAL_REASONS[result.outcome]).inc()
        if result.limit is not None:
            self._metrics.reserve_refusals.labels(limit_refusal_reason(result.limit.kind)).inc()
        return reserve_response(result)

    async def ReserveMany(
        self, request: billing_pb2.ReserveManyRequest, context: Any
    ) -> billing_pb2.ReserveManyResponse:
        """Each Reserve side by side (those of one account then share a statement, see
        hold_batching.py), each answered on its own: one that fails (an invalid request, a
        database error) answers UNSPECIFIED and holds nothing, the others are unaffected."""
        answers = await asyncio.gather(
            *(self._reserve_in_many(one, context) for one in request.requests)
        )
        return billing_pb2.ReserveManyResponse(responses=answers)

    async def _reserve_in_many(
        self, request: billing_pb2.ReserveRequest, context: Any
    ) -> billing_pb2.ReserveResponse:
        with structlog.contextvars.bound_contextvars(transaction_id=request.transaction_id):
            try:
                return await self.Reserve(request, context)
            except (InvalidRequest, IdempotencyConflict) as error:  # counted by Reserve
                log.info("reserve_refused", detail=str(error))
            except Exception as error:
                if isinstance(error, psycopg.Error):
                    self._metrics.database_errors.inc()
                log.exception("reserve_failed")
        return billing_pb2.ReserveResponse()  # RESERVE_OUTCOME_UNSPECIFIED

    async def Release(
        self, request: billing_pb2.ReleaseRequest, context: Any
    ) -> billing_pb2.ReleaseResponse:
        released = await self._ledger.release(request.transaction_id, request.reason)
        return billing_pb2.ReleaseResponse(released=released)

    async def Settle(
        self, request: billing_pb2.SettleRequest, context: Any
    ) -> billing_pb2.SettleResponse:
        result = await self._ledger.settle(
            request.transaction_id,
            request.prompt_tokens,
            request.completion_tokens,
            request.billable,
        )
        return billing_pb2.SettleResponse(
            charged_nano=result.charged_nano, already_settled=result.already_settled
        )

    async def GetBalance(
        self, request: billing_pb2.GetBalanceRequest, context: Any
    ) -> billing_pb2.Balance:
        return balance_message(await self._ledger.get_balance(request.account_id))

    async def AddCredits(
        self, request: billing_pb2.AddCreditsRequest, context: Any
    ) -> billing_pb2.Balance:
        snapshot = await self._ledger.add_credits(
            request.account_id, request.amount_nano, request.idempotency_key, request.reference
        )
        return balance_message(snapshot)

    async def RefundPayment(
        self, request: billing_pb2.RefundPaymentRequest, context: Any
    ) -> billing_pb2.RefundPaymentResponse:
        result = await self._ledger.refund_payment(request.idempotency_key)
        return billing_pb2.RefundPaymentResponse(
            refunded_nano=result.refunded_nano,
            clawed_back_nano=result.clawed_back_nano,
            already_refunded=result.already_refunded,
            balance=balance_message(result.balance),
        )

    async def CreatePromotion(
        self, request: billing_pb2.CreatePromotionRequest, context: Any
    ) -> billing_pb2.Promotion:
        require(request.HasField("starts_at"), "starts_at is required", "starts_at")
        require(request.HasField("ends_at"), "ends_at is required", "ends_at")
        promotion = await self._ledger.create_promotion(
            name=request.name,
            min_payment_nano=request.min_payment_nano,
            bonus_percent=request.bonus_percent,
            starts_at=request.starts_at.ToDatetime(tzinfo=UTC),
            ends_at=request.ends_at.ToDatetime(tzinfo=UTC),
        )
        return promotion_message(promotion)

    async def ListPromotions(
        self, request: billing_pb2.ListPromotionsRequest, context: Any
    ) -> billing_pb2.ListPromotionsResponse:
        promotions = await self._ledger.list_promotions()
        return billing_pb2.ListPromotionsResponse(
            promotions=[promotion_message(promotion) for promotion in promotions]
        )

    # Statements and route prices (see statements_rpc.py).
    async def ListTransactions(
        self, request: billing_pb2.ListTransactionsRequest, context: Any
    ) -> billing_pb2.ListTransactionsResponse:
        return await self._statements.list_transactions(request)

    async def ListUsage(
        self, request: billing_pb2.ListUsageRequest, context: Any
    ) -> billing_pb2.ListUsageResponse:
        return await self._statements.list_usage(request)

    async def ListPayments(
        self, request: billing_pb2.ListPaymentsRequest, context: Any
    ) -> billing_pb2.ListPaymentsResponse:
        return await self._statements.list_payments(request)

    async def GetPayment(
        self, request: billing_pb2.GetPaymentRequest, context: Any
    ) -> billing_pb2.Payment:
        return await self._statements.get_payment(request)

    async def ListPrices(
        self, request: billing_pb2.ListPricesRequest, context: Any
    ) -> billing_pb2.ListPricesResponse:
        return await self._statements.list_prices(request)

    async def SetRoutePrice(
        self, request: billing_pb2.SetRoutePriceRequest, context: Any
    ) -> billing_pb2.SetRoutePriceResponse:
        return await self._statements.set_route_price(request)

    # Manual credit adjustments by the dashboard admin (see adjustments.py).
    async def AdjustCredits(
        self, request: billing_pb2.AdjustCreditsRequest, context: Any
    ) -> billing_pb2.AdjustCreditsResponse:
        result = await adjust_credits(
            self._ledger._pool,
            request.account_id,
            request.amount_nano,
            request.idempotency_key,
            request.reason,
        )
        return billing_pb2.AdjustCreditsResponse(
            applied=result.applied,
            already_applied=result.already_applied,
            balance=balance_message(result.balance),
        )
