"""Integer money and the rounding rule."""

from __future__ import annotations

import pytest

from regio_common.money import eur_to_nano, nano_to_eur, request_cost_nano


def test_prices_of_the_seed_are_whole_nano_euros_per_token() -> None:
    assert eur_to_nano("0.029") == 29_000_000
    assert request_cost_nano(100, 50, eur_to_nano("0.029"), eur_to_nano("0.049")) == 5_350


def test_cost_is_rounded_up_once_per_request() -> None:
    # 1 token at €0.0000015 per 1M tokens = 0.0015 nano-EUR -> 1 nano-EUR.
    assert request_cost_nano(1, 0, 1_500, 0) == 1
    assert request_cost_nano(1_000_000, 0, 1_500, 0) == 1_500
    assert request_cost_nano(0, 0, 29_000_000, 49_000_000) == 0


def test_negative_counts_and_fractional_nanos_are_refused() -> None:
    with pytest.raises(ValueError):
        request_cost_nano(-1, 0, 1, 1)
    with pytest.raises(ValueError):
        eur_to_nano("0.0000000001")
    assert str(nano_to_eur(1_500_000_000)) == "1.5"
