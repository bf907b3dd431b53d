"""Usage limits of keys and accounts, enforced by Reserve over real gRPC and PostgreSQL:
requests and tokens per minute, concurrent requests, daily and monthly spend caps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import psycopg
import pytest

from regio.billing.v1 import billing_pb2
from tests.integration.billing.billing_helpers import (
    LIV_INPUT_NANO_PER_TOKEN,
    LIV_OUTPUT_NANO_PER_TOKEN,
    RunningBilling,
    fund,
    new_id,
    query,
    wait_for,
)
from tests.integration.billing.test_billing_usage_consumer import (
    publish,
    usage_record,
    wait_until_consumed,
)

HELD = billing_pb2.RESERVE_OUTCOME_HELD
LIMITED = billing_pb2.RESERVE_OUTCOME_LIMITED
INSUFFICIENT = billing_pb2.RESERVE_OUTCOME_INSUFFICIENT_FUNDS
KEY = billing_pb2.LIMIT_SCOPE_KEY
ACCOUNT = billing_pb2.LIMIT_SCOPE_ACCOUNT
# The worst case of a reserve(max_prompt_tokens=100, max_completion_tokens=50) on route liv.
HOLD_100_50 = 5_350
FUNDS = 1_000_000_000


async def away_from_minute_end(margin_seconds: float = 8.0) -> None:
    """Start a scenario that must fit in one UTC minute window early enough to finish in it."""
    into_minute = time.time() % 60
    if into_minute > 60 - margin_seconds:
        await asyncio.sleep(60 - into_minute + 0.2)


async def reserve(
    billing: RunningBilling,
    account: str,
    *,
    key: str = "",
    key_limits: billing_pb2.UsageLimits | None = None,
    account_limits: billing_pb2.UsageLimits | None = None,
    transaction: str | None = None,
    bound: int | None = None,
) -> billing_pb2.ReserveResponse:
    """A reserve of 100 prompt + 50 completion tokens (or `bound` of each)."""
    response: billing_pb2.ReserveResponse = await billing.stub.Reserve(
        billing_pb2.ReserveRequest(
            transaction_id=transaction or new_id("txn"),
            account_id=account,
            route="liv",
            region="eu",
            max_prompt_tokens=bound or 100,
            max_completion_tokens=bound or 50,
            ttl_seconds=60,
            key_id=key,
            key_limits=key_limits,
            account_limits=account_limits,
        )
    )
    return response


async def settle(billing: RunningBilling, transaction: str, prompt: int, completion: int) -> int:
    response = await billing.stub.Settle(
        billing_pb2.SettleRequest(
            transaction_id=transaction,
            prompt_tokens=prompt,
            completion_tokens=completion,
            billable=True,
        )
    )
    charged: int = response.charged_nano
    return charged


async def release(billing: RunningBilling, transaction: str) -> None:
    await billing.stub.Release(billing_pb2.ReleaseRequest(transaction_id=transaction, reason="t"))


async def funded_account(billing: RunningBilling) -> str:
    account = new_id("acct")
    await fund(billing.stub, account, FUNDS)
    return account


async def test_requests_per_minute_of_a_key_admit_exactly_the_limit(
    billing: RunningBilling,
) -> None:
    account = await funded_account(billing)
    key = new_id("key")
    limits = billing_pb2.UsageLimits(requests_per_minute=10)
    await away_from_minute_end()

    responses = await asyncio.gather(
        *(reserve(billing, account, key=key, key_limits=limits) for _ in range(50))
    )

    held = [r for r in responses if r.outcome == HELD]
    limited = [r for r in responses if r.outcome == LIMITED]
    assert (len(held), len(limited)) == (10, 40)
    # Every admitted request saw the counter of the one before it: exact, never lost.
    assert sorted(r.headroom.remaining_requests for r in held) == list(range(10))
    assert {r.headroom.limit_requests for r in held} == {10}
    for refused in limited:
        assert refused.limit.kind == billing_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE
        assert refused.limit.scope == KEY
        assert (refused.limit.limit, refused.limit.used) == (10, 10)
        assert 0 < refused.limit.retry_after_ms <= 60_000
        assert refused.held_nano == 0
    open_holds = await query(
        billing.database_url,
        "SELECT count(*) FROM billing.holds WHERE account_id = %s AND status = 'open'",
        account,
    )
    assert open_holds == [(10,)]


async def test_requests_per_minute_of_an_account_span_its_keys(billing: RunningBilling) -> None:
    account = await funded_account(billing)
    limits = billing_pb2.UsageLimits(requests_per_minute=10)
    first_key, second_key = new_id("key"), new_id("key")
    await away_from_minute_end()

    responses = await asyncio.gather(
        *(
            reserve(billing, account, key=key, account_limits=limits)
            for key in [first_key, second_key] * 25
        )
    )

    held = [r for r in responses if r.outcome == HELD]
    limited = [r for r in responses if r.outcome == LIMITED]
    assert (len(held), len(limited)) == (10, 40)
    assert {(r.limit.kind, r.limit.scope) for r in limited} == {
        (billing_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE, ACCOUNT)
    }


async def test_concurrent_requests_are_open_holds(billing: RunningBilling) -> None:
    account = await funded_account(billing)
    key = new_id("key")
    limits = billing_pb2.UsageLimits(max_concurrent_requests=2)
    first, second = new_id("txn"), new_id("txn")
    held = [
        await reserve(billing, account, key=key, key_limits=limits, transaction=transaction)
        for transaction in (first, second)
    ]

    third = await reserve(billing, account, key=key, key_limits=limits)
    await release(billing, first)
    after_release = await reserve(billing, account, key=key, key_limits=limits)
    refused_again = await reserve(billing, account, key=key, key_limits=limits)
    await settle(billing, second, 10, 10)
    after_settle = await reserve(billing, account, key=key, key_limits=limits)

    assert [response.outcome for response in held] == [HELD, HELD]
    assert third.outcome == LIMITED
    assert (third.limit.kind, third.limit.scope) == (
        billing_pb2.LIMIT_KIND_CONCURRENT_REQUESTS,
        KEY,
    )
    assert (third.limit.limit, third.limit.used, third.limit.retry_after_ms) == (2, 2, 1000)
    assert third.HasField("headroom") is False  # no rate limit: no x-ratelimit-* headers
    assert after_release.outcome == HELD
    assert refused_again.outcome == LIMITED
    assert after_settle.outcome == HELD


async def test_tokens_per_minute_count_settled_usage(billing: RunningBilling) -> None:
    account = await funded_account(billing)
    key = new_id("key")
    limits = billing_pb2.UsageLimits(tokens_per_minute=1_000)
    first, second = new_id("txn"), new_id("txn")
    await away_from_minute_end()

    admitted_first = await reserve(
        billing, account, key=key, key_limits=limits, transaction=first, bound=1_000
    )
    await settle(billing, first, 600, 0)
    admitted_second = await reserve(
        billing, account, key=key, key_limits=limits, transaction=second, bound=1_000
    )
    await settle(billing, second, 300, 200)
    await settle(billing, second, 300, 200)  # a repeated settlement counts once
    refused = await reserve(billing, account, key=key, key_limits=limits)

    assert admitted_first.outcome == HELD
    assert admitted_first.headroom.remaining_tokens == 1_000
    assert (admitted_second.outcome, admitted_second.headroom.remaining_tokens) == (HELD, 400)
    assert refused.outcome == LIMITED
    assert (refused.limit.kind, refused.limit.scope) == (
        billing_pb2.LIMIT_KIND_TOKENS_PER_MINUTE,
        KEY,
    )
    assert (refused.limit.limit, refused.limit.used) == (1_000, 1_100)
    assert refused.headroom.remaining_tokens == 0
    assert 0 < refused.limit.retry_after_ms <= 60_000
    minute_tokens = await query(
        billing.database_url,
        "SELECT scope, tokens FROM billing.usage_windows WHERE window_kind = 'minute'"
        " ORDER BY scope",
    )
    assert minute_tokens == [(f"account:{account}", 1_100), (f"key:{key}", 1_100)]


async def test_daily_spend_cap_counts_charges_and_holds(billing: RunningBilling) -> None:
    account = await funded_account(billing)
    key = new_id("key")
    limits = billing_pb2.UsageLimits(daily_spend_cap_nano=12_000)
    first = new_id("txn")

    held_first = await reserve(billing, account, key=key, key_limits=limits, transaction=first)
    held_second = await reserve(billing, account, key=key, key_limits=limits)
    refused = await reserve(billing, account, key=key, key_limits=limits)  # 3 x 5,350 > cap
    charged = await settle(billing, first, 10, 10)  # 780 spent, 5,350 held, 5,350 new: fits
    held_after_settle = await reserve(billing, account, key=key, key_limits=limits)
    refused_again = await reserve(billing, account, key=key, key_limits=limits)

    assert (held_first.outcome, held_second.outcome) == (HELD, HELD)
    assert refused.outcome == LIMITED
    assert (refused.limit.kind, refused.limit.scope) == (billing_pb2.LIMIT_KIND_DAILY_SPEND, KEY)
    assert (refused.limit.limit, refused.limit.used) == (12_000, 2 * HOLD_100_50)
    assert 0 < refused.limit.retry_after_ms <= 86_400_000
    assert charged == 780
    assert held_after_settle.outcome == HELD
    assert refused_again.outcome == LIMITED
    assert refused_again.limit.used == 780 + 2 * HOLD_100_50
    spent = await query(
        billing.database_url,
        "SELECT scope, window_kind, spent_nano FROM billing.usage_windows"
        " WHERE window_kind IN ('day', 'month') ORDER BY scope, window_kind",
    )
    assert spent == [
        (f"account:{account}", "day", 780),
        (f"account:{account}", "month", 780),
        (f"key:{key}", "day", 780),
        (f"key:{key}", "month", 780),
    ]


async def test_monthly_spend_cap_of_an_account(billing: RunningBilling) -> None:
    account = await funded_account(billing)
    limits = billing_pb2.UsageLimits(monthly_spend_cap_nano=HOLD_100_50)

    held = await reserve(billing, account, key=new_id("key"), account_limits=limits)
    refused = await reserve(billing, account, key=new_id("key"), account_limits=limits)

    assert held.outcome == HELD
    assert refused.outcome == LIMITED
    assert (refused.limit.kind, refused.limit.scope) == (
        billing_pb2.LIMIT_KIND_MONTHLY_SPEND,
        ACCOUNT,
    )
    assert (refused.limit.limit, refused.limit.used) == (HOLD_100_50, HOLD_100_50)
    assert refused.limit.retry_after_ms <= 31 * 86_400_000


async def test_headroom_is_the_tightest_of_key_and_account(billing: RunningBilling) -> None:
    account = await funded_account(billing)
    await away_from_minute_end()

    response = await reserve(
        billing,
        account,
        key=new_id("key"),
        key_limits=billing_pb2.UsageLimits(requests_per_minute=100, tokens_per_minute=5_000),
        account_limits=billing_pb2.UsageLimits(requests_per_minute=5, tokens_per_minute=90_000),
    )

    room = response.headroom
    assert response.outcome == HELD
    assert (room.limit_requests, room.remaining_requests) == (5, 4)
    assert (room.limit_tokens, room.remaining_tokens) == (5_000, 5_000)
    assert 0 < room.reset_requests_ms <= 60_000
    assert room.reset_tokens_ms == room.reset_requests_ms


async def test_a_repeated_transaction_counts_once(billing: RunningBilling) -> None:
    account = await funded_account(billing)
    key = new_id("key")
    limits = billing_pb2.UsageLimits(requests_per_minute=2)
    transaction = new_id("txn")
    await away_from_minute_end()

    first = await reserve(billing, account, key=key, key_limits=limits, transaction=transaction)
    repeated = await reserve(billing, account, key=key, key_limits=limits, transaction=transaction)
    second = await reserve(billing, account, key=key, key_limits=limits)
    third = await reserve(billing, account, key=key, key_limits=limits)

    assert (first.outcome, repeated.outcome, second.outcome) == (HELD, HELD, HELD)
    assert repeated.held_nano == first.held_nano
    assert third.outcome == LIMITED
    counted = await query(
        billing.database_url,
        "SELECT requests FROM billing.usage_windows WHERE scope = %s AND window_kind = 'minute'",
        f"key:{key}",
    )
    assert counted == [(2,)]


async def test_without_limits_nothing_is_counted(billing: RunningBilling) -> None:
    account = await funded_account(billing)
    transaction = new_id("txn")

    held = await reserve(billing, account, key=new_id("key"), transaction=transaction)
    await settle(billing, transaction, 100, 50)

    assert held.outcome == HELD
    assert held.HasField("headroom") is False
    assert await query(billing.database_url, "SELECT count(*) FROM billing.usage_windows") == [(0,)]
    assert await query(
        billing.database_url,
        "SELECT tracks_limits FROM billing.holds WHERE transaction_id = %s",
        transaction,
    ) == [(False,)]


async def test_with_limits_the_credit_still_decides(billing: RunningBilling) -> None:
    poor = new_id("acct")
    await fund(billing.stub, poor, HOLD_100_50 - 1)
    limits = billing_pb2.UsageLimits(requests_per_minute=1_000)

    short = await reserve(billing, poor, key=new_id("key"), key_limits=limits)
    unknown = await reserve(billing, new_id("nobody"), key=new_id("key"), key_limits=limits)

    assert (short.outcome, short.available_nano) == (INSUFFICIENT, HOLD_100_50 - 1)
    assert (unknown.outcome, unknown.available_nano) == (INSUFFICIENT, 0)
    assert await query(billing.database_url, "SELECT count(*) FROM billing.holds") == [(0,)]


async def test_the_sweeper_deletes_windows_no_limit_reads(billing: RunningBilling) -> None:
    async with await psycopg.AsyncConnection.connect(billing.database_url) as conn:
        await conn.execute(
            "INSERT INTO billing.usage_windows (scope, window_kind, window_start, requests)"
            " SELECT 'key:k', kind, date_trunc(kind, now() - age::interval, 'UTC'), 1"
            " FROM (VALUES ('minute', '2 hours'), ('minute', '0 s'), ('day', '63 days'),"
            " ('day', '1 day'), ('month', '93 days'), ('month', '0 s')) AS v(kind, age)"
        )
        await conn.commit()

    async def pruned() -> bool:
        rows = await query(billing.database_url, "SELECT count(*) FROM billing.usage_windows")
        return rows == [(3,)]

    await wait_for(pruned, within_seconds=5, what="the stale windows are deleted")
    kept = await query(
        billing.database_url,
        "SELECT window_kind, window_start > now() - interval '62 days'"
        " FROM billing.usage_windows ORDER BY window_kind",
    )
    assert kept == [("day", True), ("minute", True), ("month", True)]


async def test_a_transaction_id_of_another_account_is_a_conflict(billing: RunningBilling) -> None:
    owner, intruder = await funded_account(billing), await funded_account(billing)
    limits = billing_pb2.UsageLimits(requests_per_minute=100)
    transaction = new_id("txn")
    await reserve(billing, owner, account_limits=limits, transaction=transaction)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reserve(billing, intruder, account_limits=limits, transaction=transaction)

    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await query(
        billing.database_url,
        "SELECT account_id FROM billing.holds WHERE transaction_id = %s",
        transaction,
    ) == [(owner,)]


async def test_windows_stay_exact_while_reserves_and_settlements_interleave(
    billing: RunningBilling, nats_client: Any
) -> None:
    accounts = [await funded_account(billing) for _ in range(3)]
    limits = billing_pb2.UsageLimits(
        requests_per_minute=10_000, tokens_per_minute=10**9, daily_spend_cap_nano=10**15
    )
    await away_from_minute_end(margin_seconds=20)

    async def reserve_round() -> list[tuple[str, str]]:
        wanted = [(new_id("txn"), accounts[n % 3]) for n in range(60)]
        await asyncio.gather(
            *(
                reserve(
                    billing,
                    account,
                    key=f"key-{account}",
                    key_limits=limits,
                    account_limits=limits,
                    transaction=transaction,
                )
                for transaction, account in wanted
            )
        )
        return wanted

    first = await reserve_round()
    publishing = asyncio.gather(
        *(
            publish(nats_client, usage_record(transaction, account, 80, 40), transaction)
            for transaction, account in first
        )
    )
    second, acks = await asyncio.gather(reserve_round(), publishing)
    await wait_until_consumed(nats_client, max(ack.seq for ack in acks))

    charge = 80 * LIV_INPUT_NANO_PER_TOKEN + 40 * LIV_OUTPUT_NANO_PER_TOKEN
    windows = await query(
        billing.database_url,
        "SELECT scope, window_kind, requests, tokens, spent_nano FROM billing.usage_windows"
        " WHERE window_kind IN ('minute', 'day') ORDER BY scope, window_kind",
    )
    expected = []
    for account in sorted(accounts):
        for scope in (f"account:{account}", f"key:key-{account}"):
            expected += [(scope, "day", 0, 0, 20 * charge), (scope, "minute", 40, 20 * 120, 0)]
    assert sorted(windows) == sorted(expected)
    assert len(first) + len(second) == 120
