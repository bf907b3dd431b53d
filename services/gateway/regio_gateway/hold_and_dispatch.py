"""Hold credit and hand the request to a worker at the same time, not one after the other.

The credit hold (a gRPC call and a PostgreSQL commit, a few milliseconds) used to come before
the worker was offered the request, so every request waited for both in turn. Now the offer
goes out while billing decides, and the worker starts on the prompt; the hold still comes
before anything else: the gateway reads nothing of the worker's stream (so its client receives
nothing, and the worker's FINAL chunk is not confirmed) until the hold is granted.

When billing refuses (no credit, a limit, billing down), the stream is cancelled as soon as
the worker has accepted it: the worker stops within a step, its FINAL chunk finds no reader, so
its usage record says nothing was delivered (not billable) and billing, which holds nothing
for the transaction, charges nothing. The only cost of a refusal is that moment of the
worker's time, so an account billing refused recently, and every request while billing is
failing, takes the old order: hold first, then the offer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from regio.billing.v1 import billing_pb2
from regio_common.errors import BillingUnavailable
from regio_gateway.dispatch import Dispatcher, WorkerStream

# How long after billing refused an account (or failed) its requests hold before the offer.
CAUTIOUS_SECONDS = 60.0
# Accounts remembered at most; beyond, the oldest are forgotten (they merely speculate again).
MAX_REMEMBERED_ACCOUNTS = 10_000


class HoldRefused(Exception):
    """Billing granted no hold; `error` says why (the client's answer)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class SpeculationGuard:
    """Which requests may be offered to a worker before their hold is granted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._refused_at: dict[str, float] = {}
        self._billing_failed_at = -CAUTIOUS_SECONDS

    def may_speculate(self, account_id: str) -> bool:
        now = self._clock()
        if now - self._billing_failed_at < CAUTIOUS_SECONDS:
            return False
        refused = self._refused_at.get(account_id)
        if refused is None:
            return True
        if now - refused < CAUTIOUS_SECONDS:
            return False
        del self._refused_at[account_id]
        return True

    def refused(self, account_id: str, error: BaseException) -> None:
        """Billing did not grant a hold of this account (or could not be asked)."""
        now = self._clock()
        if isinstance(error, BillingUnavailable):
            self._billing_failed_at = now
            return
        self._refused_at.pop(account_id, None)
        self._refused_at[account_id] = now
        if len(self._refused_at) > MAX_REMEMBERED_ACCOUNTS:
            del self._refused_at[next(iter(self._refused_at))]


async def hold_and_dispatch(
    *,
    hold: Callable[[], Awaitable[billing_pb2.ReserveResponse]],
    dispatch: Callable[[], Awaitable[WorkerStream]],
    release: Callable[[str], Awaitable[None]],
    dispatcher: Dispatcher,
    speculate: bool,
) -> tuple[billing_pb2.ReserveResponse, WorkerStream]:
    """The granted hold and the accepted stream; raises HoldRefused when billing granted no
    hold, or the dispatch's error after releasing the hold. `speculate`: offer the request
    while billing decides."""
    if not speculate:
        held = await _held(hold)
        return held, await _dispatched(dispatch(), release)
    offer = asyncio.ensure_future(dispatch())
    try:
        held = await _held(hold)
    except BaseException:
        # Refused, failed, or the client left: the offer must not serve anything.
        dispatcher.abandon(offer)
        raise
    return held, await _dispatched(offer, release)


async def _held(
    hold: Callable[[], Awaitable[billing_pb2.ReserveResponse]],
) -> billing_pb2.ReserveResponse:
    try:
        return await hold()
    except Exception as error:
        raise HoldRefused(error) from error


async def _dispatched(
    offer: Awaitable[WorkerStream], release: Callable[[str], Awaitable[None]]
) -> WorkerStream:
    try:
        return await offer
    except BaseException:
        await release("not dispatched")
        raise
