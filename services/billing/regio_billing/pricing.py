"""Pure pricing rules: how much to hold before a request and how much to charge after it."""

from __future__ import annotations

from dataclasses import dataclass

from regio_common.catalogue import Route
from regio_common.money import request_cost_nano


@dataclass(frozen=True)
class Prices:
    """nano-EUR per 1M tokens, frozen on the hold so that a price change never reprices it."""

    input_price_nano: int
    output_price_nano: int

    @classmethod
    def of_route(cls, route: Route) -> Prices:
        return cls(route.input_price_nano, route.output_price_nano)


@dataclass(frozen=True)
class Charge:
    amount_nano: int
    # What the price formula gave before capping at the hold; differs only when a worker
    # reported more tokens than were reserved.
    uncapped_nano: int

    @property
    def capped(self) -> bool:
        return self.amount_nano != self.uncapped_nano


def hold_amount_nano(max_prompt_tokens: int, max_completion_tokens: int, prices: Prices) -> int:
    """The worst-case cost of a request: what is held before serving it."""
    return request_cost_nano(
        max_prompt_tokens, max_completion_tokens, prices.input_price_nano, prices.output_price_nano
    )


def settlement_charge(
    prompt_tokens: int, completion_tokens: int, billable: bool, prices: Prices, hold_nano: int
) -> Charge:
    """What a finished request costs: nothing when not billable, never more than its hold
    (the customer agreed to at most the hold, so any excess is ours to absorb)."""
    if not billable:
        return Charge(amount_nano=0, uncapped_nano=0)
    cost = request_cost_nano(
        prompt_tokens, completion_tokens, prices.input_price_nano, prices.output_price_nano
    )
    return Charge(amount_nano=min(cost, hold_nano), uncapped_nano=cost)
