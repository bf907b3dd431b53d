"""A seeded random walk over the ledger: payments (with and without a promotion, replayed),
reserves, settlements (repeated), releases, expiry and sweeping, refunds (repeated) and price
changes, on several accounts. After every step all invariants hold and every balance, hold and
lot equals that of a plain Python model of the rules."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from regio_billing.ledger import Ledger
from regio_billing.pricing import Prices
from regio_billing.promotions import bonus_nano
from regio_billing.results import ReserveOutcome
from regio_common.money import NANO_PER_EUR, request_cost_nano
from tests.integration.billing.billing_helpers import query

SEED = 20_261_122
STEPS = 300
ACCOUNTS = [f"walk-{n}" for n in range(4)]
EUR = NANO_PER_EUR
# (min payment, percent): the best qualifying promotion applies.
PROMOTIONS = [(100 * EUR, 33), (50 * EUR, 10)]


@dataclass
class Lot:
    kind: str
    payment_key: str
    remaining: int


@dataclass
class Hold:
    account: str
    amount: int
    prices: Prices
    max_prompt_tokens: int
    max_completion_tokens: int
    status: str = "open"
    charged: int | None = None

    def charge_for(self, prompt: int, completion: int, billable: bool) -> int:
        """Usage beyond the hold's token bounds is clamped to them, so never costs more."""
        if not billable:
            return 0
        return request_cost_nano(
            min(prompt, self.max_prompt_tokens),
            min(completion, self.max_completion_tokens),
            self.prices.input_price_nano,
            self.prices.output_price_nano,
        )


@dataclass
class Model:
    prices: Prices
    lots: dict[str, list[Lot]] = field(default_factory=lambda: {a: [] for a in ACCOUNTS})
    held: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACCOUNTS, 0))
    holds: dict[str, Hold] = field(default_factory=dict)
    payments: dict[str, tuple[str, int]] = field(default_factory=dict)
    refunds: dict[str, tuple[int, int]] = field(default_factory=dict)

    def balance(self, account: str) -> int:
        return sum(lot.remaining for lot in self.lots[account])

    def available(self, account: str) -> int:
        return self.balance(account) - self.held[account]

    def pay(self, account: str, key: str, amount: int) -> None:
        self.payments[key] = (account, amount)
        self.lots[account].append(Lot("paid", key, amount))
        percent = max((p for minimum, p in PROMOTIONS if amount >= minimum), default=0)
        if bonus_nano(amount, percent):
            self.lots[account].append(Lot("promotional", key, bonus_nano(amount, percent)))

    def consume(self, account: str, amount: int) -> None:
        # Promotional lots first, then paid ones, oldest first within each kind.
        lots = self.lots[account]
        for lot in sorted(lots, key=lambda lot: (lot.kind == "paid", lots.index(lot))):
            part = min(amount, lot.remaining)
            lot.remaining -= part
            amount -= part
        assert amount == 0

    def refund(self, key: str) -> tuple[int, int]:
        account = self.payments[key][0]
        lots = {lot.kind: lot for lot in self.lots[account] if lot.payment_key == key}
        bonus = lots.get("promotional")
        clawed = min(bonus.remaining, self.available(account)) if bonus else 0
        if bonus:
            bonus.remaining -= clawed
        refunded = min(lots["paid"].remaining, self.available(account))
        lots["paid"].remaining -= refunded
        return refunded, clawed


async def expire(database_url: str, transaction_id: str) -> None:
    """Let a hold's time run out without waiting for it."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE billing.holds SET expires_at = now() - interval '1 second'"
            " WHERE transaction_id = %s",
            (transaction_id,),
        )


class Walk:
    def __init__(self, ledger: Ledger, database_url: str, rng: random.Random) -> None:
        self.ledger = ledger
        self.database_url = database_url
        self.rng = rng
        self.model = Model(prices=Prices(29_000_000, 49_000_000))
        self.counter = 0
        self.done: dict[str, int] = {}

    def new_key(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def pick(self, status: str) -> str | None:
        keys = [k for k, h in self.model.holds.items() if h.status == status]
        return self.rng.choice(keys) if keys else None

    async def top_up(self) -> None:
        await self._pay(self.rng.randint(1, 49 * EUR))

    async def promotion_payment(self) -> None:
        await self._pay(self.rng.choice([50, 100, 150]) * EUR + self.rng.randint(0, EUR))

    async def _pay(self, amount: int) -> None:
        account, key = self.rng.choice(ACCOUNTS), self.new_key("pay")
        await self.ledger.add_credits(account, amount, key, "walk")
        self.model.pay(account, key, amount)

    async def replay_payment(self) -> None:
        if self.model.payments:
            key = self.rng.choice(sorted(self.model.payments))
            account, amount = self.model.payments[key]
            await self.ledger.add_credits(account, amount, key, "walk replay")

    async def reserve(self) -> None:
        account, transaction = self.rng.choice(ACCOUNTS), self.new_key("txn")
        prompt, completion = self.rng.randint(0, 2_000), self.rng.randint(0, 2_000)
        prices = self.model.prices
        amount = request_cost_nano(
            prompt, completion, prices.input_price_nano, prices.output_price_nano
        )
        result = await self.ledger.reserve(
            transaction_id=transaction,
            account_id=account,
            route="liv",
            region="eu",
            max_prompt_tokens=prompt,
            max_completion_tokens=completion,
            ttl_seconds=600,
        )
        if amount <= self.model.available(account):
            assert (result.outcome, result.held_nano) == (ReserveOutcome.HELD, amount)
            self.model.holds[transaction] = Hold(account, amount, prices, prompt, completion)
            self.model.held[account] += amount
        else:
            assert result.outcome == ReserveOutcome.INSUFFICIENT_FUNDS

    async def settle(self) -> None:
        transaction = self.pick("open")
        if transaction is None:
            return
        hold = self.model.holds[transaction]
        prompt, completion = self.rng.randint(0, 2_500), self.rng.randint(0, 2_500)
        billable = self.rng.random() < 0.9
        expected = hold.charge_for(prompt, completion, billable)
        result = await self.ledger.settle(transaction, prompt, completion, billable)
        assert (result.charged_nano, result.already_settled) == (expected, False)
        hold.status, hold.charged = "settled", expected
        self.model.held[hold.account] -= hold.amount
        self.model.consume(hold.account, expected)

    async def duplicate_settle(self) -> None:
        transaction = self.pick("settled")
        if transaction is not None:
            result = await self.ledger.settle(transaction, 1, 1, True)
            assert (result.charged_nano, result.already_settled) == (
                self.model.holds[transaction].charged,
                True,
            )

    async def release(self) -> None:
        transaction = self.pick(self.rng.choice(["open", "open", "released", "settled"]))
        if transaction is None:
            return
        hold = self.model.holds[transaction]
        assert await self.ledger.release(transaction, "walk") is (hold.status == "open")
        self._released(hold)

    async def expire_and_sweep(self) -> None:
        transaction = self.pick("open")
        if transaction is not None:
            await expire(self.database_url, transaction)
            assert await self.ledger.sweep_expired_holds() == 1
            self._released(self.model.holds[transaction])

    def _released(self, hold: Hold) -> None:
        if hold.status == "open":
            hold.status = "released"
            self.model.held[hold.account] -= hold.amount

    async def refund(self) -> None:
        if not self.model.payments:
            return
        key = self.rng.choice(sorted(self.model.payments))
        result = await self.ledger.refund_payment(key)
        if key in self.model.refunds:
            assert result.already_refunded
        else:
            self.model.refunds[key] = self.model.refund(key)
        assert (result.refunded_nano, result.clawed_back_nano) == self.model.refunds[key]

    async def change_price(self) -> None:
        prices = Prices(
            self.rng.randint(10**12, 10**14) // 10**6 * 10**6,
            self.rng.randint(10**12, 10**14) // 10**6 * 10**6,
        )
        await self.ledger.publish_prices({"liv": prices})
        self.model.prices = prices

    async def check(self, step: int, name: str) -> None:
        context = f"step {step} ({name})"
        assert await self.ledger.check_invariants() == [], context
        for account in ACCOUNTS:
            balance = await self.ledger.get_balance(account)
            assert (balance.balance_nano, balance.held_nano) == (
                self.model.balance(account),
                self.model.held[account],
            ), f"{context}: {account}"
        rows = await query(
            self.database_url,
            "SELECT l.account_id, l.kind, p.idempotency_key, l.remaining_nano FROM billing.lots l"
            " JOIN billing.payments p ON p.id = l.payment_id ORDER BY l.id",
        )
        expected = [
            (account, lot.kind, lot.payment_key, lot.remaining)
            for account, lots in self.model.lots.items()
            for lot in lots
        ]
        assert sorted(rows) == sorted(expected), context


async def test_random_walk_keeps_every_invariant(ledger: Ledger, fresh_database_url: str) -> None:
    now = datetime.now(UTC)
    for n, (minimum, percent) in enumerate(PROMOTIONS):
        await ledger.create_promotion(
            name=f"walk-{n}",
            min_payment_nano=minimum,
            bonus_percent=percent,
            starts_at=now - timedelta(hours=1),
            ends_at=now + timedelta(hours=1),
        )
    walk = Walk(ledger, fresh_database_url, random.Random(SEED))
    steps = {
        walk.top_up: 3,
        walk.promotion_payment: 2,
        walk.replay_payment: 1,
        walk.reserve: 6,
        walk.settle: 4,
        walk.duplicate_settle: 1,
        walk.release: 2,
        walk.expire_and_sweep: 1,
        walk.refund: 1,
        walk.change_price: 1,
    }
    actions, weights = list(steps), list(steps.values())
    counts: dict[str, int] = {}
    for step in range(STEPS):
        action = walk.rng.choices(actions, weights)[0]
        await action()
        counts[action.__name__] = counts.get(action.__name__, 0) + 1
        await walk.check(step, action.__name__)
    # The walk really visited every kind of step.
    assert set(counts) == {action.__name__ for action in actions}, counts
