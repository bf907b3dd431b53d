"""The dashboard's call of billing's AdjustCredits (manual, audited credit adjustments)."""

from __future__ import annotations

import grpc

from regio.billing.v1 import billing_pb2
from regio_common.billing_rpc import BillingRpcClient
from regio_common.errors import Conflict, InvalidRequest, ServiceUnavailable


class AdjustmentsClient(BillingRpcClient):
    async def adjust(
        self, account_id: str, amount_nano: int, idempotency_key: str, reason: str
    ) -> billing_pb2.AdjustCreditsResponse:
        request = billing_pb2.AdjustCreditsRequest(
            account_id=account_id,
            amount_nano=amount_nano,
            idempotency_key=idempotency_key,
            reason=reason,
        )
        try:
            response: billing_pb2.AdjustCreditsResponse = await self._stub.AdjustCredits(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidRequest(error.details() or "Invalid adjustment.") from None
            if error.code() == grpc.StatusCode.ALREADY_EXISTS:
                raise Conflict(
                    error.details() or "This adjustment key was used for another adjustment.",
                    code="idempotency_key_reused",
                ) from None
            raise ServiceUnavailable("Billing is temporarily unavailable.") from None
        return response
