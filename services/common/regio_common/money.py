"""Integer money. Amounts are nano-EUR (1 EUR = 10**9); prices are nano-EUR per 1M tokens.

Rounding rule: the cost of one request is rounded up to the next whole nano-EUR, once, on the
sum of its input and output parts."""

from __future__ import annotations

from decimal import Decimal

NANO_PER_EUR = 1_000_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000


def eur_to_nano(eur: Decimal | str | int) -> int:
    value = Decimal(str(eur)) * NANO_PER_EUR
    if value != value.to_integral_value():
        raise ValueError(f"{eur} EUR is not a whole number of nano-EUR")
    return int(value)


def nano_to_eur(nano: int) -> Decimal:
    return Decimal(nano) / NANO_PER_EUR


def request_cost_nano(
    prompt_tokens: int, completion_tokens: int, input_price_nano: int, output_price_nano: int
) -> int:
    """Exact cost of a request in nano-EUR, rounded up (ceil) to a whole nano-EUR."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("token counts cannot be negative")
    numerator = prompt_tokens * input_price_nano + completion_tokens * output_price_nano
    return -(-numerator // TOKENS_PER_PRICE_UNIT)
