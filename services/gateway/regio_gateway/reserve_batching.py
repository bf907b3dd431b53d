"""The gateway's Reserves share gRPC calls under load.

A Reserve asked for while no call to billing is in flight goes at once, alone, as a plain
Reserve: one client never waits for a batch. The Reserves asked for while a call is in flight
wait for it to end and then go together in one ReserveMany call (at most MAX_PER_CALL). Each
gRPC call costs the gateway about 0.2 ms of CPU (a task, the call's objects, the C core's
operations) and billing as much again, whatever its size; under load, one call carries many
Reserves, and billing's holds of one account then also share a statement (hold_batching.py).
At most one call is in flight, so the calls' size follows the load."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from regio.billing.v1 import billing_pb2

# Reserves in one ReserveMany call at most; the rest wait for the next call.
MAX_PER_CALL = 64

ReserveOne = Callable[[billing_pb2.ReserveRequest], Awaitable[billing_pb2.ReserveResponse]]
ReserveMany = Callable[
    [Sequence[billing_pb2.ReserveRequest]], Awaitable[Sequence[billing_pb2.ReserveResponse]]
]
Waiting = tuple[billing_pb2.ReserveRequest, asyncio.Future[billing_pb2.ReserveResponse]]


class ReserveBatcher:
    def __init__(
        self, reserve_one: ReserveOne, reserve_many: ReserveMany, max_per_call: int = MAX_PER_CALL
    ) -> None:
        self._reserve_one = reserve_one
        self._reserve_many = reserve_many
        self._max_per_call = max_per_call
        self._waiting: list[Waiting] = []
        self._in_flight = False
        self._calls: set[asyncio.Task[None]] = set()

    async def reserve(self, request: billing_pb2.ReserveRequest) -> billing_pb2.ReserveResponse:
        """Billing's answer, or the call's error (grpc.aio.AioRpcError) as a plain call's."""
        if not self._in_flight:
            self._in_flight = True
            try:
                return await self._reserve_one(request)
            finally:
                self._call_ended()
        answer: asyncio.Future[billing_pb2.ReserveResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append((request, answer))
        return await answer

    def _call_ended(self) -> None:
        self._in_flight = False
        self._waiting = [
            (request, answer) for request, answer in self._waiting if not answer.done()
        ]
        if not self._waiting:
            return
        batch = self._waiting[: self._max_per_call]
        del self._waiting[: self._max_per_call]
        self._in_flight = True
        call = asyncio.create_task(self._call(batch))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[Waiting]) -> None:
        try:
            responses = await self._reserve_many([request for request, _ in batch])
            if len(responses) != len(batch):
                raise RuntimeError(f"{len(responses)} answers to {len(batch)} Reserves")
        except asyncio.CancelledError:  # the gateway stops
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as error:
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
        else:
            for (_, answer), response in zip(batch, responses, strict=True):
                if not answer.done():  # its request left meanwhile (its hold expires)
                    answer.set_result(response)
        finally:
            self._call_ended()
