"""The gateway's side of billing: hold before serving, release when nothing was served.

Fails closed: if billing cannot be reached, the request is refused with 503."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import structlog

from regio.billing.v1 import billing_pb2
from regio_common.billing_rpc import BillingRpcClient
from regio_common.config_records import UsageLimits
from regio_common.errors import BillingUnavailable, InsufficientBudget, ModelNotFound
from regio_common.ops_server import NotReady
from regio_gateway.metrics import GatewayMetrics
from regio_gateway.rate_limits import LimitRefusal, limits_to_proto
from regio_gateway.reserve_batching import ReserveBatcher

log = structlog.get_logger()

# Part of the ops listener's check timeout, so that the check can say why it failed.
READY_CHECK_SECONDS = 1.5


class BillingClient(BillingRpcClient):
    def __init__(
        self, address: str, timeout_seconds: float, *, token: str, metrics: GatewayMetrics
    ) -> None:
        super().__init__(address, timeout_seconds, token=token)
        self._metrics = metrics
        self._reserves = ReserveBatcher(self._reserve_one, self._reserve_many)

    async def _reserve_one(
        self, request: billing_pb2.ReserveRequest
    ) -> billing_pb2.ReserveResponse:
        response: billing_pb2.ReserveResponse = await self._stub.Reserve(
            request, timeout=self._timeout, metadata=self._metadata
        )
        return response

    async def _reserve_many(
        self, requests: Sequence[billing_pb2.ReserveRequest]
    ) -> Sequence[billing_pb2.ReserveResponse]:
        try:
            response: billing_pb2.ReserveManyResponse = await self._stub.ReserveMany(
                billing_pb2.ReserveManyRequest(requests=requests),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            # A billing of an earlier version (during an upgrade): each Reserve on its own.
            return await asyncio.gather(*(self._reserve_one(request) for request in requests))
        return response.responses

    async def check_reachable(self) -> None:
        """Readiness: the channel to billing is connected (or connects within a moment)."""
        state = self._channel.get_state(try_to_connect=True)
        if state == grpc.ChannelConnectivity.READY:
            return
        try:
            await asyncio.wait_for(self._channel.channel_ready(), READY_CHECK_SECONDS)
        except TimeoutError:
            raise NotReady(f"not reachable ({state.name.lower()})") from None

    async def reserve(
        self,
        *,
        transaction_id: str,
        account_id: str,
        route: str,
        region: str,
        max_prompt_tokens: int,
        max_completion_tokens: int,
        ttl_seconds: int,
        key_id: str,
        key_limits: UsageLimits,
        account_limits: UsageLimits,
    ) -> billing_pb2.ReserveResponse:
        """Holds credit, or raises: InsufficientBudget, ModelNotFound, LimitRefusal (a limit of
        the key or account, 429), BillingUnavailable. The response's `headroom` (when set)
        feeds the x-ratelimit-* headers."""
        request = billing_pb2.ReserveRequest(
            transaction_id=transaction_id,
            account_id=account_id,
            route=route,
            region=region,
            max_prompt_tokens=max_prompt_tokens,
            max_completion_tokens=max_completion_tokens,
            ttl_seconds=ttl_seconds,
            key_id=key_id,
            key_limits=limits_to_proto(key_limits),
            account_limits=limits_to_proto(account_limits),
        )
        try:
            response = await self._reserves.reserve(request)
        except grpc.aio.AioRpcError as error:
            self._metrics.dependency_failed("billing")
            log.error("billing_reserve_failed", grpc_code=error.code().name, detail=error.details())
            raise BillingUnavailable(
                "Billing is temporarily unavailable; the request was not served."
            ) from None
        if response.outcome == billing_pb2.RESERVE_OUTCOME_INSUFFICIENT_FUNDS:
            raise InsufficientBudget(
                "Insufficient budget: your available credits do not cover this request "
                f"(max_tokens={max_completion_tokens}). Top up credits or lower max_tokens.",
                param="max_tokens",
            )
        if response.outcome == billing_pb2.RESERVE_OUTCOME_LIMITED:
            headroom = response.headroom if response.HasField("headroom") else None
            raise LimitRefusal(response.limit, headroom)
        if response.outcome == billing_pb2.RESERVE_OUTCOME_UNKNOWN_ROUTE:
            raise ModelNotFound(f"The model '{route}' does not exist.", param="model")
        if response.outcome != billing_pb2.RESERVE_OUTCOME_HELD:
            # In a ReserveMany call: this Reserve failed alone (billing logged why).
            self._metrics.dependency_failed("billing")
            log.error("billing_reserve_failed", grpc_code="OK", detail="no outcome")
            raise BillingUnavailable("Billing gave no answer; the request was not served.")
        return response

    async def release(self, transaction_id: str, reason: str) -> None:
        """Best effort: a hold that cannot be released now expires and is swept by billing."""
        try:
            await self._stub.Release(
                billing_pb2.ReleaseRequest(transaction_id=transaction_id, reason=reason),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            self._metrics.dependency_failed("billing")
            log.warning("billing_release_failed", grpc_code=error.code().name, reason=reason)
