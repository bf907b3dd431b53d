"""A client connection to the billing gRPC service, shared by its callers (gateway, dashboard)."""

from __future__ import annotations

import grpc

from regio.billing.v1 import billing_pb2_grpc

BILLING_AUTH_METADATA = "authorization"


class BillingRpcClient:
    """Owns the channel and the stub; subclasses add the calls their service makes."""

    def __init__(self, address: str, timeout_seconds: float, token: str = "") -> None:
        # The token rides on every call as `authorization: Bearer <token>` (billing checks it in
        # its auth interceptor); a call without one is refused when billing has tokens set.
        # Passed with each call rather than by a client interceptor: grpc.aio runs every
        # intercepted call in a task of its own, a cost on the path of every request.
        self._metadata: tuple[tuple[str, str], ...] | None = (
            ((BILLING_AUTH_METADATA, f"Bearer {token}"),) if token else None
        )
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = billing_pb2_grpc.BillingStub(self._channel)
        self._timeout = timeout_seconds

    async def close(self) -> None:
        await self._channel.close()
