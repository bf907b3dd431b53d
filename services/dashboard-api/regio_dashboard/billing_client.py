"""The dashboard's side of billing: top-ups and balances, through billing's gRPC API."""

from __future__ import annotations

import grpc

from regio.billing.v1 import billing_pb2
from regio_common.billing_rpc import BillingRpcClient
from regio_common.errors import Conflict, InvalidRequest, ServiceUnavailable


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
            response: billing_pb2.Balance = await method(request, timeout=self._timeout)  # type: ignore[operator]
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
