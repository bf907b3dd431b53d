"""A client connection to the billing gRPC service, shared by its callers (gateway, dashboard)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from regio.billing.v1 import billing_pb2_grpc

BILLING_AUTH_METADATA = "authorization"


class _BearerToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, token: str) -> None:
        self._metadata = (BILLING_AUTH_METADATA, f"Bearer {token}")

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata = [*(client_call_details.metadata or ()), self._metadata]
        details = client_call_details._replace(metadata=metadata)
        return await continuation(details, request)


class BillingRpcClient:
    """Owns the channel and the stub; subclasses add the calls their service makes."""

    def __init__(self, address: str, timeout_seconds: float, token: str = "") -> None:
        # The token rides on every call as `authorization: Bearer <token>` (billing checks it in
        # its auth interceptor); a call without one is refused when billing has tokens set.
        interceptors = [_BearerToken(token)] if token else []
        self._channel = grpc.aio.insecure_channel(address, interceptors=interceptors)
        self._stub = billing_pb2_grpc.BillingStub(self._channel)
        self._timeout = timeout_seconds

    async def close(self) -> None:
        await self._channel.close()
