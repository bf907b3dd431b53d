"""The credit hold and the offer to a worker run side by side; nothing of a refused request is
read, and the offer is cancelled (hold_and_dispatch.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from regio.billing.v1 import billing_pb2
from regio_common.errors import BillingUnavailable, InsufficientBudget, ServiceUnavailable
from regio_gateway.dispatch import Dispatcher, WorkerStream
from regio_gateway.hold_and_dispatch import (
    CAUTIOUS_SECONDS,
    HoldRefused,
    SpeculationGuard,
    hold_and_dispatch,
)


class Stream:
    def __init__(self) -> None:
        self.cancelled = False
        self.closed = False

    async def cancel(self) -> None:
        self.cancelled = True

    async def close(self) -> None:
        self.closed = True


class Calls:
    """A hold and a dispatch that each wait for their own go, recording what happened."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.hold_go = asyncio.Event()
        self.dispatch_go = asyncio.Event()
        self.hold_error: Exception | None = None
        self.dispatch_error: Exception | None = None
        self.stream = Stream()
        self.released: list[str] = []

    async def hold(self) -> billing_pb2.ReserveResponse:
        self.log.append("hold asked")
        await self.hold_go.wait()
        if self.hold_error is not None:
            raise self.hold_error
        return billing_pb2.ReserveResponse(outcome=billing_pb2.RESERVE_OUTCOME_HELD)

    async def dispatch(self) -> WorkerStream:
        self.log.append("offered")
        await self.dispatch_go.wait()
        if self.dispatch_error is not None:
            raise self.dispatch_error
        return cast(WorkerStream, self.stream)

    async def release(self, reason: str) -> None:
        self.released.append(reason)


def dispatcher() -> Dispatcher:
    return Dispatcher(
        cast(Any, None), cast(Any, None), cast(Any, None), 1.0, 1.0, 1.0, cast(Any, None)
    )


async def test_the_offer_goes_out_while_billing_decides() -> None:
    calls = Calls()
    task = asyncio.create_task(
        hold_and_dispatch(
            hold=calls.hold,
            dispatch=calls.dispatch,
            release=calls.release,
            dispatcher=dispatcher(),
            speculate=True,
        )
    )
    await asyncio.sleep(0.01)
    assert sorted(calls.log) == ["hold asked", "offered"]  # both before either answered
    calls.dispatch_go.set()
    await asyncio.sleep(0.01)
    assert not task.done()  # the stream is not handed over before the hold
    calls.hold_go.set()
    held, stream = await task
    assert held.outcome == billing_pb2.RESERVE_OUTCOME_HELD
    assert stream is cast(WorkerStream, calls.stream)
    assert not calls.stream.cancelled and calls.released == []


async def test_a_refused_hold_cancels_the_offer_once_a_worker_accepted_it() -> None:
    calls = Calls()
    calls.hold_error = InsufficientBudget("no credit")
    calls.hold_go.set()
    with pytest.raises(HoldRefused) as refused:
        await hold_and_dispatch(
            hold=calls.hold,
            dispatch=calls.dispatch,
            release=calls.release,
            dispatcher=dispatcher(),
            speculate=True,
        )
    assert isinstance(refused.value.error, InsufficientBudget)
    assert not calls.stream.cancelled  # not accepted yet
    calls.dispatch_go.set()  # the worker accepts after the refusal
    await asyncio.sleep(0.01)
    assert calls.stream.cancelled and calls.stream.closed
    assert calls.released == []  # nothing was held


async def test_a_failed_dispatch_releases_the_granted_hold() -> None:
    calls = Calls()
    calls.dispatch_error = ServiceUnavailable("no worker")
    calls.hold_go.set()
    calls.dispatch_go.set()
    for speculate in (True, False):
        with pytest.raises(ServiceUnavailable):
            await hold_and_dispatch(
                hold=calls.hold,
                dispatch=calls.dispatch,
                release=calls.release,
                dispatcher=dispatcher(),
                speculate=speculate,
            )
    assert calls.released == ["not dispatched", "not dispatched"]


async def test_without_speculation_nothing_is_offered_before_the_hold() -> None:
    calls = Calls()
    calls.hold_error = InsufficientBudget("no credit")
    calls.hold_go.set()
    with pytest.raises(HoldRefused):
        await hold_and_dispatch(
            hold=calls.hold,
            dispatch=calls.dispatch,
            release=calls.release,
            dispatcher=dispatcher(),
            speculate=False,
        )
    assert calls.log == ["hold asked"]


def test_an_account_refused_by_billing_holds_before_its_offers_for_a_while() -> None:
    now = [100.0]
    guard = SpeculationGuard(clock=lambda: now[0])
    assert guard.may_speculate("acct-1")
    guard.refused("acct-1", InsufficientBudget("no credit"))
    assert not guard.may_speculate("acct-1")
    assert guard.may_speculate("acct-2")
    now[0] += CAUTIOUS_SECONDS
    assert guard.may_speculate("acct-1")


def test_while_billing_fails_no_request_is_offered_before_its_hold() -> None:
    now = [100.0]
    guard = SpeculationGuard(clock=lambda: now[0])
    guard.refused("acct-1", BillingUnavailable("down"))
    assert not guard.may_speculate("acct-2")
    now[0] += CAUTIOUS_SECONDS
    assert guard.may_speculate("acct-2")
