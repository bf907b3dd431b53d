"""Versioned prices, promotions, credit lots and refunds (I8), through gRPC and the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from regio.billing.v1 import billing_pb2
from regio_billing.ledger import Ledger
from regio_billing.price_versions import PriceSource, latest_prices, publish_prices
from regio_billing.pricing import Prices
from regio_billing.results import ReserveOutcome
from regio_common.money import NANO_PER_EUR
from tests.integration.billing.billing_helpers import RunningBilling, new_id, query

EUR = NANO_PER_EUR
# €1 per token in and out: makes charges of whole euros easy to write.
EURO_PER_TOKEN = Prices(input_price_nano=10**6 * EUR, output_price_nano=10**6 * EUR)


def stamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value)
    return result


async def create_promotion(
    stub: object, name: str, min_eur: int, percent: int, *, hours_from: int = -1, hours_to: int = 1
) -> billing_pb2.Promotion:
    now = datetime.now(UTC)
    promotion: billing_pb2.Promotion = await stub.CreatePromotion(  # type: ignore[attr-defined]
        billing_pb2.CreatePromotionRequest(
            name=name,
            min_payment_nano=min_eur * EUR,
            bonus_percent=percent,
            starts_at=stamp(now + timedelta(hours=hours_from)),
            ends_at=stamp(now + timedelta(hours=hours_to)),
        )
    )
    return promotion


async def pay(stub: object, account: str, amount_nano: int, key: str) -> billing_pb2.Balance:
    balance: billing_pb2.Balance = await stub.AddCredits(  # type: ignore[attr-defined]
        billing_pb2.AddCreditsRequest(
            account_id=account, amount_nano=amount_nano, idempotency_key=key
        )
    )
    return balance


async def refund(stub: object, key: str) -> billing_pb2.RefundPaymentResponse:
    response: billing_pb2.RefundPaymentResponse = await stub.RefundPayment(  # type: ignore[attr-defined]
        billing_pb2.RefundPaymentRequest(idempotency_key=key)
    )
    return response


async def lots_of(database_url: str, account: str) -> list[tuple[str, int, int]]:
    rows = await query(
        database_url,
        "SELECT kind, amount_nano, remaining_nano FROM billing.lots WHERE account_id = %s"
        " ORDER BY id",
        account,
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def spend(ledger: Ledger, account: str, tokens: int, *, settle: bool = True) -> str:
    """Hold (and by default charge) `tokens` output tokens at the ledger's current prices."""
    transaction = new_id("txn")
    result = await ledger.reserve(
        transaction_id=transaction,
        account_id=account,
        route="liv",
        region="eu",
        max_prompt_tokens=0,
        max_completion_tokens=tokens,
        ttl_seconds=600,
    )
    assert result.outcome == ReserveOutcome.HELD
    if settle:
        await ledger.settle(transaction, 0, tokens, True)
    return transaction


async def reserve_100_50(ledger: Ledger, account: str) -> str:
    transaction = new_id("txn")
    result = await ledger.reserve(
        transaction_id=transaction,
        account_id=account,
        route="liv",
        region="eu",
        max_prompt_tokens=100,
        max_completion_tokens=50,
        ttl_seconds=600,
    )
    assert result.outcome == ReserveOutcome.HELD
    return transaction


async def test_a_price_change_never_reprices_an_open_hold(ledger: Ledger) -> None:
    account = new_id("acct")
    await ledger.add_credits(account, 1_000_000, new_id("pay"), "")
    first = await reserve_100_50(ledger, account)
    assert await ledger.publish_prices({"liv": Prices(58_000_000, 98_000_000)}) == ["liv"]
    second = await reserve_100_50(ledger, account)

    assert (await ledger.settle(first, 100, 50, True)).charged_nano == 5_350  # old price
    assert (await ledger.settle(second, 100, 50, True)).charged_nano == 10_700  # new price
    assert await ledger.check_invariants() == []


async def test_versions_are_appended_only_when_the_catalogue_price_changes(
    ledger: Ledger, fresh_database_url: str
) -> None:
    assert await ledger.publish_catalogue_prices() == []
    await ledger.publish_prices({"liv": Prices(1, 2)})
    assert await ledger.publish_catalogue_prices() == ["liv"]
    rows = await query(
        fresh_database_url,
        "SELECT input_price_nano, output_price_nano FROM billing.route_prices"
        " WHERE route = 'liv' ORDER BY id",
    )
    assert rows == [(29_000_000, 49_000_000), (1, 2), (29_000_000, 49_000_000)]


async def test_an_admin_price_survives_restarts_until_the_catalogue_price_changes(
    ledger: Ledger, fresh_database_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(fresh_database_url) as conn:
        await publish_prices(conn, {"liv": Prices(40_000_000, 60_000_000)}, PriceSource.ADMIN)
    # A billing restart republishes the unchanged catalogue: the admin's price stays current.
    assert await ledger.publish_catalogue_prices() == []
    async with await psycopg.AsyncConnection.connect(fresh_database_url) as conn:
        assert await latest_prices(conn, "liv") == Prices(40_000_000, 60_000_000)
    # The operator edits the file's price: that change wins.
    assert await ledger.publish_prices({"liv": Prices(30_000_000, 50_000_000)}) == ["liv"]
    async with await psycopg.AsyncConnection.connect(fresh_database_url) as conn:
        assert await latest_prices(conn, "liv") == Prices(30_000_000, 50_000_000)


async def test_pay_150_get_199_50_exactly_once(billing: RunningBilling) -> None:
    created = await create_promotion(billing.stub, "spring", 150, 33)
    account, key = new_id("acct"), new_id("pay")

    first = await pay(billing.stub, account, 150 * EUR, key)
    replay = await pay(billing.stub, account, 150 * EUR, key)

    # 33% of €150 = €49.50 exactly (floor rounding; the seed's "€200" is marketing rounding).
    assert first.available_nano == replay.available_nano == 199_500_000_000
    assert await lots_of(billing.database_url, account) == [
        ("paid", 150 * EUR, 150 * EUR),
        ("promotional", 49_500_000_000, 49_500_000_000),
    ]
    listed = await billing.stub.ListPromotions(billing_pb2.ListPromotionsRequest())
    assert [p.name for p in listed.promotions] == ["spring"]
    assert listed.promotions[0] == created
    assert created.bonus_percent == 33 and created.min_payment_nano == 150 * EUR


async def test_only_qualifying_payments_earn_a_bonus(billing: RunningBilling) -> None:
    await create_promotion(billing.stub, "big", 100, 10)
    await create_promotion(billing.stub, "bigger", 100, 20)  # the best one applies, alone
    await create_promotion(billing.stub, "past", 1, 50, hours_from=-3, hours_to=-2)
    await create_promotion(billing.stub, "future", 1, 50, hours_from=2, hours_to=3)
    account = new_id("acct")

    small = await pay(billing.stub, account, 100 * EUR - 1, new_id("pay"))
    assert small.balance_nano == 100 * EUR - 1
    big = await pay(billing.stub, account, 100 * EUR, new_id("pay"))
    assert big.balance_nano - small.balance_nano == 120 * EUR
    assert [lot[0] for lot in await lots_of(billing.database_url, account)] == [
        "paid",
        "paid",
        "promotional",
    ]


async def test_promotion_requests_are_checked(billing: RunningBilling) -> None:
    await create_promotion(billing.stub, "once", 1, 5)
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await create_promotion(billing.stub, "once", 1, 5)
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    for name, percent, hours_to in (("", 5, 1), ("zero", 0, 1), ("backwards", 5, -2)):
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await create_promotion(billing.stub, name, 1, percent, hours_to=hours_to)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await billing.stub.CreatePromotion(
            billing_pb2.CreatePromotionRequest(name="x", min_payment_nano=1, bonus_percent=1)
        )
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_charges_consume_promotional_credit_first(
    billing: RunningBilling,
) -> None:
    await create_promotion(billing.stub, "spring", 150, 33)
    ledger = billing.ledger
    await ledger.publish_prices({"liv": EURO_PER_TOKEN})
    account = new_id("acct")
    await pay(billing.stub, account, 150 * EUR, new_id("pay"))

    await spend(ledger, account, 40)
    assert await lots_of(billing.database_url, account) == [
        ("paid", 150 * EUR, 150 * EUR),
        ("promotional", 49_500_000_000, 9_500_000_000),
    ]
    await spend(ledger, account, 20)  # €9.50 of bonus, then €10.50 paid
    assert await lots_of(billing.database_url, account) == [
        ("paid", 150 * EUR, 139_500_000_000),
        ("promotional", 49_500_000_000, 0),
    ]


async def test_refund_returns_unused_paid_credit_and_claws_back_the_bonus(
    billing: RunningBilling,
) -> None:
    await create_promotion(billing.stub, "spring", 150, 33)
    ledger = billing.ledger
    await ledger.publish_prices({"liv": EURO_PER_TOKEN})
    account, key, other = new_id("acct"), new_id("pay"), new_id("pay")
    await pay(billing.stub, account, 150 * EUR, key)
    await pay(billing.stub, account, 10 * EUR, other)
    await spend(ledger, account, 30)  # all from the bonus: €19.50 of it is left

    first = await refund(billing.stub, key)
    again = await refund(billing.stub, key)

    assert (first.refunded_nano, first.clawed_back_nano, first.already_refunded) == (
        150 * EUR,
        19_500_000_000,
        False,
    )
    assert (again.refunded_nano, again.clawed_back_nano, again.already_refunded) == (
        150 * EUR,
        19_500_000_000,
        True,
    )
    assert first.balance.available_nano == again.balance.available_nano == 10 * EUR
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await refund(billing.stub, new_id("pay"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_refund_never_takes_credit_that_an_open_hold_needs(billing: RunningBilling) -> None:
    await create_promotion(billing.stub, "spring", 100, 20)
    ledger = billing.ledger
    await ledger.publish_prices({"liv": EURO_PER_TOKEN})
    account, key = new_id("acct"), new_id("pay")
    await pay(billing.stub, account, 100 * EUR, key)  # €100 paid + €20 bonus
    held = await spend(ledger, account, 90, settle=False)  # €30 available

    result = await refund(billing.stub, key)

    # The bonus goes first (€20), then what is left of the available credit (€10).
    assert (result.clawed_back_nano, result.refunded_nano) == (20 * EUR, 10 * EUR)
    assert (result.balance.balance_nano, result.balance.held_nano) == (90 * EUR, 90 * EUR)
    assert (await ledger.settle(held, 0, 90, True)).charged_nano == 90 * EUR
    assert (await ledger.get_balance(account)).balance_nano == 0
