"""Hold and charge rules, in integer nano-EUR."""

from __future__ import annotations

from regio_billing.pricing import Charge, Prices, hold_amount_nano, settlement_charge
from regio_common.catalogue import Catalogue
from regio_common.settings import DEFAULT_CATALOGUE

# Route liv: €0.029 and €0.049 per 1M tokens.
LIV = Prices(input_price_nano=29_000_000, output_price_nano=49_000_000)


def test_liv_prices_come_from_the_catalogue() -> None:
    route = Catalogue.load(DEFAULT_CATALOGUE).routes["liv"]

    assert Prices.of_route(route) == LIV


def test_hold_is_the_worst_case_cost() -> None:
    assert hold_amount_nano(100, 50, LIV) == 100 * 29 + 50 * 49 == 5_350
    assert hold_amount_nano(0, 0, LIV) == 0


def test_hold_rounds_a_fraction_of_a_nano_up() -> None:
    tiny = Prices(input_price_nano=1, output_price_nano=3)

    assert hold_amount_nano(1, 0, tiny) == 1
    assert hold_amount_nano(1_000_000, 1, tiny) == 2  # 1 + 3e-6, rounded up once


def test_charge_is_the_exact_price_of_the_reported_tokens() -> None:
    charge = settlement_charge(100, 50, True, LIV, hold_nano=53_500)

    assert charge == Charge(amount_nano=5_350, uncapped_nano=5_350)
    assert not charge.capped


def test_a_non_billable_request_is_free() -> None:
    assert settlement_charge(100, 50, False, LIV, hold_nano=53_500).amount_nano == 0


def test_the_charge_is_capped_at_the_hold() -> None:
    charge = settlement_charge(1_000, 1_000, True, LIV, hold_nano=780)

    assert charge.amount_nano == 780
    assert charge.uncapped_nano == 78_000
    assert charge.capped


def test_a_charge_equal_to_the_hold_is_not_capped() -> None:
    charge = settlement_charge(10, 10, True, LIV, hold_nano=780)

    assert (charge.amount_nano, charge.capped) == (780, False)
