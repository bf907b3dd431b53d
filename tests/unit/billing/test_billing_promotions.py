"""The bonus rule of promotions: floor(amount * percent / 100) nano-EUR."""

from __future__ import annotations

from regio_billing.lots import CONSUMPTION_ORDER
from regio_billing.promotions import bonus_nano
from regio_common.money import eur_to_nano


def test_pay_150_at_33_percent_earns_49_50() -> None:
    # The seed's "Pay €150 and get €200" rounds €199.50 up for marketing; billing does not.
    assert bonus_nano(eur_to_nano(150), 33) == eur_to_nano("49.50")


def test_the_bonus_is_rounded_down_to_a_whole_nano_eur() -> None:
    assert bonus_nano(1, 33) == 0
    assert bonus_nano(100, 33) == 33
    assert bonus_nano(101, 33) == 33  # 33.33 nano-EUR
    assert bonus_nano(eur_to_nano(10), 100) == eur_to_nano(10)


def test_promotional_lots_are_consumed_before_paid_ones() -> None:
    assert CONSUMPTION_ORDER.startswith("(kind = 'paid')")  # false (promotional) sorts first
