"""What the ledger answers: plain values, independent of protobuf and of the database."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from regio_billing.usage_limits import Headroom, LimitRefusal


class ReserveOutcome(enum.Enum):
    HELD = "held"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_ROUTE = "unknown_route"
    LIMITED = "limited"  # a rate, concurrency or spend limit of the key or account


@dataclass(frozen=True)
class ReserveResult:
    outcome: ReserveOutcome
    held_nano: int
    # After the hold when HELD; the current available credit when refused.
    available_nano: int
    limit: LimitRefusal | None = None  # which limit refused, when LIMITED
    headroom: Headroom | None = None  # when the key or account has a rate limit


@dataclass(frozen=True)
class SettleResult:
    charged_nano: int
    already_settled: bool


@dataclass(frozen=True)
class BalanceSnapshot:
    account_id: str
    balance_nano: int
    held_nano: int

    @property
    def available_nano(self) -> int:
        return self.balance_nano - self.held_nano


@dataclass(frozen=True)
class RefundResult:
    payment_key: str
    account_id: str
    # The unused paid part returned, and the unused bonus of the payment taken back.
    refunded_nano: int
    clawed_back_nano: int
    already_refunded: bool
    balance: BalanceSnapshot
