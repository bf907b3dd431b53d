"""Manual credit adjustments through gRPC: credits, debits that never overdraw (open holds
stay covered), idempotency by key; the ledger invariants are checked after each test."""

from __future__ import annotations

import grpc
import pytest

from regio.billing.v1 import billing_pb2
from tests.integration.billing.billing_helpers import (
    RunningBilling,
    balance_of,
    fund,
    new_id,
    reserve,
)

EUR = 1_000_000_000


async def adjust(
    billing: RunningBilling, account_id: str, amount_nano: int, key: str | None = None
) -> billing_pb2.AdjustCreditsResponse:
    response: billing_pb2.AdjustCreditsResponse = await billing.stub.AdjustCredits(
        billing_pb2.AdjustCreditsRequest(
            account_id=account_id,
            amount_nano=amount_nano,
            idempotency_key=key or new_id("adj"),
            reason="test",
        )
    )
    return response


async def test_a_credit_and_a_debit_move_the_balance_once_per_key(billing: RunningBilling) -> None:
    account = new_id("acct")
    key = new_id("adj")
    first = await adjust(billing, account, 3 * EUR, key)
    again = await adjust(billing, account, 3 * EUR, key)
    assert (first.applied, first.already_applied, first.balance.balance_nano) == (
        True,
        False,
        3 * EUR,
    )
    assert (again.applied, again.already_applied, again.balance.balance_nano) == (
        True,
        True,
        3 * EUR,
    )
    taken = await adjust(billing, account, -EUR)
    assert taken.applied and taken.balance.balance_nano == 2 * EUR
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await adjust(billing, account, 5 * EUR, key)  # the key names another adjustment
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_debit_never_overdraws_nor_takes_what_a_hold_needs(billing: RunningBilling) -> None:
    account = new_id("acct")
    await fund(billing.stub, account, 2 * EUR)
    held = await reserve(billing.stub, account, new_id("tx"))
    assert held.held_nano > 0
    available = (await balance_of(billing.stub, account)).available_nano
    refused = await adjust(billing, account, -(available + 1))
    assert not refused.applied and refused.balance.balance_nano == 2 * EUR
    emptied = await adjust(billing, account, -available)
    assert emptied.applied and emptied.balance.available_nano == 0
    assert emptied.balance.held_nano == held.held_nano


async def test_zero_and_missing_fields_are_invalid(billing: RunningBilling) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await adjust(billing, new_id("acct"), 0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
