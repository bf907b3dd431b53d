"""A client connection to the billing gRPC service, shared by its callers (gateway, dashboard)."""

from __future__ import annotations

import grpc

from regio.billing.v1 import billing_pb2_grpc


class BillingRpcClient:
    """Owns the channel and the stub; subclasses add the calls their service makes."""

    def __init__(self, address: str, timeout_seconds: float) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = billing_pb2_grpc.BillingStub(self._channel)
        self._timeout = timeout_seconds

    async def close(self) -> None:
        await self._channel.close()
