"""The dashboard's side of billing: top-ups and balances, through billing's gRPC API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import grpc

from regio.billing.v1 import billing_pb2
from regio_common.billing_rpc import BillingRpcClient
from regio_common.errors import (
    Conflict,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    RegioError,
    ServiceUnavailable,
)

Response = TypeVar("Response")


class CreditsClient(BillingRpcClient):
    async def add_credits(
        self, account_id: str, amount_nano: int, idempotency_key: str, reference: str
    ) -> billing_pb2.Balance:
        request = billing_pb2.AddCreditsRequest(
            account_id=account_id,
            amount_nano=amount_nano,
            idempotency_key=idempotency_key,
            reference=reference,
        )
        return await self._call(self._stub.AddCredits, request)

    async def balance(self, account_id: str) -> billing_pb2.Balance:
        return await self._call(
            self._stub.GetBalance, billing_pb2.GetBalanceRequest(account_id=account_id)
        )

    async def _call(self, method: object, request: object) -> billing_pb2.Balance:
        try:
            response: billing_pb2.Balance = await method(
                request, timeout=self._timeout, metadata=self._metadata
            )  # type: ignore[operator]
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidRequest(error.details() or "Invalid credit request.") from None
            if error.code() == grpc.StatusCode.ALREADY_EXISTS:
                raise Conflict(
                    error.details() or "This idempotency key was used for another payment.",
                    param="idempotency_key",
                ) from None
            raise ServiceUnavailable("Billing is temporarily unavailable.") from None
        return response

    # -- statements, payments, promotions and prices: errors mapped by _request --------------
    async def transactions(
        self,
        account_id: str,
        window: TimeWindow,
        limit: int,
        after: tuple[datetime, int] | None,
    ) -> list[billing_pb2.Transaction]:
        request = billing_pb2.ListTransactionsRequest(account_id=account_id, limit=limit)
        _set_window(request, window)
        if after is not None:
            request.after_created_at.FromDatetime(after[0])
            request.after_id = after[1]
        response = await self._request(self._stub.ListTransactions, request)
        return list(response.transactions)

    async def usage(
        self,
        account_id: str,
        window: TimeWindow,
        limit: int,
        *,
        route: str,
        region: str,
        after: tuple[str, str, str] | None,
    ) -> list[billing_pb2.UsageDay]:
        request = billing_pb2.ListUsageRequest(
            account_id=account_id, limit=limit, route=route, region=region
        )
        _set_window(request, window)
        if after is not None:
            request.after_day, request.after_route, request.after_region = after
        response = await self._request(self._stub.ListUsage, request)
        return list(response.usage)

    async def payments(
        self,
        account_id: str,
        window: TimeWindow,
        limit: int,
        after: tuple[datetime, int] | None,
    ) -> list[billing_pb2.Payment]:
        request = billing_pb2.ListPaymentsRequest(account_id=account_id, limit=limit)
        _set_window(request, window)
        if after is not None:
            request.after_created_at.FromDatetime(after[0])
            request.after_id = after[1]
        response = await self._request(self._stub.ListPayments, request)
        return list(response.payments)

    async def payment(self, account_id: str, payment_id: int) -> billing_pb2.Payment:
        request = billing_pb2.GetPaymentRequest(account_id=account_id, payment_id=payment_id)
        payment: billing_pb2.Payment = await self._request(
            self._stub.GetPayment, request, NotFound("No such payment.", param="payment_id")
        )
        return payment

    async def refund_payment(self, idempotency_key: str) -> billing_pb2.RefundPaymentResponse:
        request = billing_pb2.RefundPaymentRequest(idempotency_key=idempotency_key)
        response: billing_pb2.RefundPaymentResponse = await self._request(
            self._stub.RefundPayment, request, NotFound("No such payment.", param="payment_id")
        )
        return response

    async def create_promotion(
        self, request: billing_pb2.CreatePromotionRequest
    ) -> billing_pb2.Promotion:
        promotion: billing_pb2.Promotion = await self._request(
            self._stub.CreatePromotion,
            request,
            conflict=Conflict("A promotion with this name exists.", param="name"),
        )
        return promotion

    async def promotions(self) -> list[billing_pb2.Promotion]:
        response = await self._request(
            self._stub.ListPromotions, billing_pb2.ListPromotionsRequest()
        )
        return list(response.promotions)

    async def prices(self, route: str = "") -> list[billing_pb2.RoutePrice]:
        request = billing_pb2.ListPricesRequest(route=route)
        response = await self._request(self._stub.ListPrices, request)
        return list(response.prices)

    async def set_route_price(
        self, route: str, input_price_nano: int, output_price_nano: int
    ) -> billing_pb2.SetRoutePriceResponse:
        request = billing_pb2.SetRoutePriceRequest(
            route=route, input_price_nano=input_price_nano, output_price_nano=output_price_nano
        )
        response: billing_pb2.SetRoutePriceResponse = await self._request(
            self._stub.SetRoutePrice,
            request,
            ModelNotFound(f"The route '{route}' does not exist.", param="route"),
        )
        return response

    async def _request(
        self,
        method: Callable[..., Awaitable[Response]],
        request: object,
        not_found: RegioError | None = None,
        conflict: RegioError | None = None,
    ) -> Response:
        try:
            return await method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise _dashboard_error(error, not_found, conflict) from None


@dataclass(frozen=True)
class TimeWindow:
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def _set_window(request: Any, window: TimeWindow) -> None:
    if window.since is not None:
        request.since.FromDatetime(window.since)
    if window.until is not None:
        request.until.FromDatetime(window.until)


def _dashboard_error(
    error: grpc.aio.AioRpcError, not_found: RegioError | None, conflict: RegioError | None
) -> RegioError:
    """INVALID_ARGUMENT 400, NOT_FOUND 404, ALREADY_EXISTS 409; anything else (UNAVAILABLE,
    DEADLINE_EXCEEDED, INTERNAL) means billing cannot answer now: 503."""
    code = error.code()
    details = error.details() or "Invalid request."
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(details[:1].upper() + details[1:] + ".")
    if code == grpc.StatusCode.NOT_FOUND:
        return not_found or NotFound(details)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return conflict or Conflict(details)
    return ServiceUnavailable("Billing is temporarily unavailable.")
