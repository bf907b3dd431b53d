"""Statements through gRPC against the real PostgreSQL: an account's transactions, its usage per
activation and UTC day, its payments with bonuses and refunds, and versioned route prices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from regio.billing.v1 import billing_pb2
from regio_billing import statements
from regio_common.money import NANO_PER_EUR
from tests.integration.billing.billing_helpers import (
    LIV_INPUT_NANO_PER_TOKEN,
    LIV_OUTPUT_NANO_PER_TOKEN,
    RunningBilling,
    new_id,
    query,
)

EUR = NANO_PER_EUR


def stamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value)
    return result


async def db_now(database_url: str) -> datetime:
    """The database's clock: entries are stamped with it, so time filters are cut with it."""
    rows = await query(database_url, "SELECT clock_timestamp()")
    moment: datetime = rows[0][0]
    return moment


async def pay(stub: Any, account: str, eur: int, key: str | None = None) -> str:
    key = key or new_id("pay")
    await stub.AddCredits(
        billing_pb2.AddCreditsRequest(
            account_id=account, amount_nano=eur * EUR, idempotency_key=key, reference="top-up"
        )
    )
    return key


async def serve(stub: Any, account: str, prompt: int, completion: int, region: str = "eu") -> str:
    """One request: reserve, then settle the reported tokens."""
    transaction = new_id("txn")
    reserved = await stub.Reserve(
        billing_pb2.ReserveRequest(
            transaction_id=transaction,
            account_id=account,
            route="liv",
            region=region,
            max_prompt_tokens=prompt,
            max_completion_tokens=completion,
            ttl_seconds=600,
        )
    )
    assert reserved.outcome == billing_pb2.RESERVE_OUTCOME_HELD
    await stub.Settle(
        billing_pb2.SettleRequest(
            transaction_id=transaction,
            prompt_tokens=prompt,
            completion_tokens=completion,
            billable=True,
        )
    )
    return transaction


def liv_cost(prompt: int, completion: int) -> int:
    return prompt * LIV_INPUT_NANO_PER_TOKEN + completion * LIV_OUTPUT_NANO_PER_TOKEN


async def all_transactions(stub: Any, account: str, limit: int, **filters: Any) -> list[Any]:
    """Every page, following the position of the last entry of each page."""
    found: list[Any] = []
    after: dict[str, Any] = {}
    while True:
        page = await stub.ListTransactions(
            billing_pb2.ListTransactionsRequest(account_id=account, limit=limit, **filters, **after)
        )
        found.extend(page.transactions)
        if len(page.transactions) < limit:
            return found
        last = page.transactions[-1]
        after = {"after_created_at": last.created_at, "after_id": last.id}


async def test_transactions_list_every_entry_of_the_account_newest_first(
    billing: RunningBilling,
) -> None:
    stub = billing.stub
    now = datetime.now(UTC)
    await stub.CreatePromotion(
        billing_pb2.CreatePromotionRequest(
            name="autumn",
            min_payment_nano=100 * EUR,
            bonus_percent=10,
            starts_at=stamp(now - timedelta(hours=1)),
            ends_at=stamp(now + timedelta(hours=1)),
        )
    )
    account, other = new_id("acct"), new_id("acct")
    payment = await pay(stub, account, 100)
    await pay(stub, other, 5)
    transaction = await serve(stub, account, 1000, 200, region="de")
    await stub.RefundPayment(billing_pb2.RefundPaymentRequest(idempotency_key=payment))

    listed = (
        await stub.ListTransactions(billing_pb2.ListTransactionsRequest(account_id=account))
    ).transactions
    charge = liv_cost(1000, 200)
    # The charge used the bonus first: its rest is clawed back, the whole payment refunded.
    assert [(t.kind, t.balance_effect_nano) for t in listed] == [
        ("refund", -100 * EUR),
        ("clawback", -(10 * EUR - charge)),
        ("charge", -charge),
        ("promotion", 10 * EUR),
        ("payment", 100 * EUR),
    ]
    assert all(t.amount_nano == abs(t.balance_effect_nano) for t in listed)
    by_kind = {t.kind: t for t in listed}
    assert by_kind["charge"].reference == transaction
    assert (by_kind["charge"].route, by_kind["charge"].region) == ("liv", "de")
    assert (by_kind["charge"].prompt_tokens, by_kind["charge"].completion_tokens) == (1000, 200)
    assert by_kind["payment"].reference == payment and by_kind["payment"].memo == "top-up"
    assert by_kind["promotion"].memo == "autumn"
    assert by_kind["payment"].route == "" and by_kind["payment"].prompt_tokens == 0
    times = [t.created_at.ToDatetime() for t in listed]
    assert times == sorted(times, reverse=True)
    balance = await stub.GetBalance(billing_pb2.GetBalanceRequest(account_id=account))
    assert sum(t.balance_effect_nano for t in listed) == balance.balance_nano == 0


async def test_transaction_pages_are_stable_while_entries_are_added(
    billing: RunningBilling,
) -> None:
    stub = billing.stub
    account = new_id("acct")
    await pay(stub, account, 10)
    for completion in range(1, 6):
        await serve(stub, account, 10, completion)
    everything = await all_transactions(stub, account, limit=100)
    assert len(everything) == 6

    first = await stub.ListTransactions(
        billing_pb2.ListTransactionsRequest(account_id=account, limit=4)
    )
    await serve(stub, account, 10, 99)  # a new entry between two pages
    last = first.transactions[-1]
    second = await stub.ListTransactions(
        billing_pb2.ListTransactionsRequest(
            account_id=account, limit=4, after_created_at=last.created_at, after_id=last.id
        )
    )
    assert [*first.transactions, *second.transactions] == everything
    # Pages of two give the same sequence as one page (plus the new entry in front).
    paged = await all_transactions(stub, account, limit=2)
    assert paged[1:] == everything and paged[0].completion_tokens == 99


async def test_transactions_are_filtered_by_time(billing: RunningBilling) -> None:
    stub = billing.stub
    account = new_id("acct")
    await pay(stub, account, 10)
    after_payment = await db_now(billing.database_url)
    await serve(stub, account, 10, 1)
    after_first_charge = await db_now(billing.database_url)
    await serve(stub, account, 10, 2)

    def kinds(found: list[Any]) -> list[tuple[str, int]]:
        return [(t.kind, t.completion_tokens) for t in found]

    since = {"since": stamp(after_payment)}
    assert kinds(await all_transactions(stub, account, 1, **since)) == [
        ("charge", 2),
        ("charge", 1),
    ]
    until = {"until": stamp(after_first_charge)}
    assert kinds(await all_transactions(stub, account, 1, **until)) == [
        ("charge", 1),
        ("payment", 0),
    ]
    assert kinds(await all_transactions(stub, account, 5, **since, **until)) == [("charge", 1)]


async def backdate(database_url: str, transaction: str, moment: datetime) -> None:
    """Move a settlement to another time (settlements, unlike the journal, may be edited)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute(
            "UPDATE billing.settlements SET created_at = %s WHERE transaction_id = %s",
            (moment, transaction),
        )


async def test_usage_is_summed_per_utc_day_and_activation(billing: RunningBilling) -> None:
    stub = billing.stub
    account = new_id("acct")
    await pay(stub, account, 10)
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    placed = [
        (midnight - timedelta(microseconds=1), "eu", 100, 10),  # last instant of March 1st
        (midnight - timedelta(hours=5), "eu", 200, 20),
        (midnight - timedelta(hours=1), "de", 300, 30),
        (midnight, "eu", 400, 40),  # first instant of March 2nd
        (midnight + timedelta(hours=23), "eu", 500, 50),
    ]
    for moment, region, prompt, completion in placed:
        transaction = await serve(stub, account, prompt, completion, region=region)
        await backdate(billing.database_url, transaction, moment)
    await serve(stub, account, 1, 1)  # today

    window: dict[str, Any] = {
        "since": stamp(midnight - timedelta(days=1)),
        "until": stamp(midnight + timedelta(days=1)),
    }
    found = (await stub.ListUsage(billing_pb2.ListUsageRequest(account_id=account, **window))).usage
    assert [
        (u.day, u.region, u.requests, u.prompt_tokens, u.completion_tokens, u.charged_nano)
        for u in found
    ] == [
        ("2026-03-02", "eu", 2, 900, 90, liv_cost(400, 40) + liv_cost(500, 50)),
        ("2026-03-01", "de", 1, 300, 30, liv_cost(300, 30)),
        ("2026-03-01", "eu", 2, 300, 30, liv_cost(100, 10) + liv_cost(200, 20)),
    ]
    assert {u.route for u in found} == {"liv"}

    # One row a page gives the same rows; a region filter keeps only its activation.
    paged: list[Any] = []
    after: dict[str, Any] = {}
    while True:
        page = await stub.ListUsage(
            billing_pb2.ListUsageRequest(account_id=account, limit=1, **window, **after)
        )
        paged.extend(page.usage)
        if not page.usage:
            break
        last = page.usage[-1]
        after = {"after_day": last.day, "after_route": last.route, "after_region": last.region}
    assert paged == list(found)
    only_de = await stub.ListUsage(
        billing_pb2.ListUsageRequest(account_id=account, region="de", **window)
    )
    assert [(u.day, u.region) for u in only_de.usage] == [("2026-03-01", "de")]
    # Without a window, today's request is the newest row.
    unfiltered = await stub.ListUsage(billing_pb2.ListUsageRequest(account_id=account))
    assert unfiltered.usage[0].day == datetime.now(UTC).date().isoformat()
    assert unfiltered.usage[0].requests == 1 and len(unfiltered.usage) == 4


async def test_payments_show_their_bonus_and_refund(billing: RunningBilling) -> None:
    stub = billing.stub
    now = datetime.now(UTC)
    await stub.CreatePromotion(
        billing_pb2.CreatePromotionRequest(
            name="spring",
            min_payment_nano=150 * EUR,
            bonus_percent=33,
            starts_at=stamp(now - timedelta(hours=1)),
            ends_at=stamp(now + timedelta(hours=1)),
        )
    )
    account = new_id("acct")
    small = await pay(stub, account, 20)
    big = await pay(stub, account, 150)
    await stub.RefundPayment(billing_pb2.RefundPaymentRequest(idempotency_key=small))

    listed = (await stub.ListPayments(billing_pb2.ListPaymentsRequest(account_id=account))).payments
    assert [p.idempotency_key for p in listed] == [big, small]
    newest, oldest = listed
    assert (newest.amount_nano, newest.bonus_nano, newest.promotion) == (
        150 * EUR,
        49_500_000_000,
        "spring",
    )
    assert newest.paid_remaining_nano == 150 * EUR and not newest.refunded
    assert (oldest.bonus_nano, oldest.promotion, oldest.refunded) == (0, "", True)
    assert (oldest.refunded_nano, oldest.clawed_back_nano, oldest.paid_remaining_nano) == (
        20 * EUR,
        0,
        0,
    )
    assert oldest.refunded_at.ToDatetime() >= oldest.created_at.ToDatetime()

    second_page = await stub.ListPayments(
        billing_pb2.ListPaymentsRequest(
            account_id=account, limit=1, after_created_at=newest.created_at, after_id=newest.id
        )
    )
    assert list(second_page.payments) == [oldest]
    got = await stub.GetPayment(
        billing_pb2.GetPaymentRequest(account_id=account, payment_id=newest.id)
    )
    assert got == newest
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await stub.GetPayment(
            billing_pb2.GetPaymentRequest(account_id=new_id("acct"), payment_id=newest.id)
        )
    assert elsewhere.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_route_price_is_a_new_version_for_the_next_request_only(
    billing: RunningBilling,
) -> None:
    stub = billing.stub
    account = new_id("acct")
    await pay(stub, account, 10)
    before = (await stub.ListPrices(billing_pb2.ListPricesRequest())).prices
    assert [(p.route, p.input_price_nano, p.output_price_nano, p.current) for p in before] == [
        ("liv", 29_000_000, 49_000_000, True)
    ]
    admitted = new_id("txn")
    await stub.Reserve(
        billing_pb2.ReserveRequest(
            transaction_id=admitted,
            account_id=account,
            route="liv",
            region="eu",
            max_prompt_tokens=100,
            max_completion_tokens=100,
            ttl_seconds=600,
        )
    )

    changed = await stub.SetRoutePrice(
        billing_pb2.SetRoutePriceRequest(
            route="liv", input_price_nano=58_000_000, output_price_nano=98_000_000
        )
    )
    assert changed.new_version and changed.price.current
    assert changed.price.version > before[0].version
    same = await stub.SetRoutePrice(
        billing_pb2.SetRoutePriceRequest(
            route="liv", input_price_nano=58_000_000, output_price_nano=98_000_000
        )
    )
    assert not same.new_version and same.price == changed.price

    settled = await stub.Settle(
        billing_pb2.SettleRequest(
            transaction_id=admitted, prompt_tokens=100, completion_tokens=100, billable=True
        )
    )
    assert settled.charged_nano == liv_cost(100, 100)  # admitted before: the old price
    await serve(stub, account, 100, 100)
    charges = [
        t.amount_nano
        for t in (
            await stub.ListTransactions(billing_pb2.ListTransactionsRequest(account_id=account))
        ).transactions
        if t.kind == "charge"
    ]
    assert charges == [2 * liv_cost(100, 100), liv_cost(100, 100)]

    history = await stub.ListPrices(
        billing_pb2.ListPricesRequest(route="liv", include_history=True)
    )
    assert [(p.input_price_nano, p.current) for p in history.prices] == [
        (58_000_000, True),
        (29_000_000, False),
    ]
    current = await stub.ListPrices(billing_pb2.ListPricesRequest(route="liv"))
    assert list(current.prices) == [changed.price]

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.SetRoutePrice(
            billing_pb2.SetRoutePriceRequest(route="nope", input_price_nano=1, output_price_nano=1)
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as negative:
        await stub.SetRoutePrice(
            billing_pb2.SetRoutePriceRequest(route="liv", input_price_nano=-1, output_price_nano=1)
        )
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_statement_requests_are_checked(billing: RunningBilling) -> None:
    stub = billing.stub
    now = datetime.now(UTC)
    bad_requests = [
        (stub.ListTransactions, billing_pb2.ListTransactionsRequest(account_id="")),
        (stub.ListTransactions, billing_pb2.ListTransactionsRequest(account_id="a", limit=1001)),
        (
            stub.ListUsage,
            billing_pb2.ListUsageRequest(account_id="a", since=stamp(now), until=stamp(now)),
        ),
        (stub.ListUsage, billing_pb2.ListUsageRequest(account_id="a", after_day="yesterday")),
        (stub.ListPayments, billing_pb2.ListPaymentsRequest(account_id="")),
    ]
    for method, request in bad_requests:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
    # An account billing never saw has empty statements, not an error.
    empty = await stub.ListTransactions(billing_pb2.ListTransactionsRequest(account_id="new"))
    assert list(empty.transactions) == []


@pytest.mark.parametrize(
    ("template", "where", "index"),
    [
        (
            statements.TRANSACTIONS_QUERY,
            "p.ledger_account = %s AND p.created_at >= %s"
            " AND (p.created_at, p.journal_id) < (%s, %s)",
            "postings_account_time_idx",
        ),
        (
            statements.PAYMENTS_QUERY,
            "p.account_id = %s AND p.created_at >= %s AND (p.created_at, p.id) < (%s, %s)",
            "payments_account_time_idx",
        ),
    ],
)
async def test_statements_read_an_index_range_of_the_account(
    billing: RunningBilling, template: str, where: str, index: str
) -> None:
    """The access path is (account, time): checked on the plan, with sequential scans priced
    out as they would be on a large table."""
    since = datetime(2026, 1, 1, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(billing.database_url) as conn:
        await conn.execute("SET enable_seqscan = off")
        cursor = await conn.execute(
            "EXPLAIN " + template.format(where=where), ("x", since, datetime.now(UTC), 5, 20)
        )
        plan = "\n".join(row[0] for row in await cursor.fetchall())
    assert index in plan, plan
