"""The Billing gRPC service: translates protobuf to ledger calls and back, nothing more.
Errors are mapped to status codes by interceptors.DomainErrorInterceptor."""

from __future__ import annotations

from typing import Any

from regio.billing.v1 import billing_pb2, billing_pb2_grpc
from regio_billing.ledger import Ledger
from regio_billing.results import BalanceSnapshot, ReserveOutcome

OUTCOME_TO_PROTO = {
    ReserveOutcome.HELD: billing_pb2.RESERVE_OUTCOME_HELD,
    ReserveOutcome.INSUFFICIENT_FUNDS: billing_pb2.RESERVE_OUTCOME_INSUFFICIENT_FUNDS,
    ReserveOutcome.UNKNOWN_ROUTE: billing_pb2.RESERVE_OUTCOME_UNKNOWN_ROUTE,
}


def balance_message(snapshot: BalanceSnapshot) -> billing_pb2.Balance:
    return billing_pb2.Balance(
        account_id=snapshot.account_id,
        balance_nano=snapshot.balance_nano,
        held_nano=snapshot.held_nano,
        available_nano=snapshot.available_nano,
    )


class BillingService(billing_pb2_grpc.BillingServicer):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def Reserve(
        self, request: billing_pb2.ReserveRequest, context: Any
    ) -> billing_pb2.ReserveResponse:
        result = await self._ledger.reserve(
            transaction_id=request.transaction_id,
            account_id=request.account_id,
            route=request.route,
            region=request.region,
            max_prompt_tokens=request.max_prompt_tokens,
            max_completion_tokens=request.max_completion_tokens,
            ttl_seconds=request.ttl_seconds,
        )
        return billing_pb2.ReserveResponse(
            outcome=OUTCOME_TO_PROTO[result.outcome],
            held_nano=result.held_nano,
            available_nano=result.available_nano,
        )

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
