"""A hypothesis state machine against the real ledger in PostgreSQL: top-ups (some earning a
promotion bonus, some replayed), reserves, settlements, duplicate settlements, releases,
expiry with a sweep, refunds and price changes in any order hypothesis finds. After every
step the invariants I1-I8 hold and every balance, hold and lot equals that of the plain
Python model of the rules shared with the seeded random walk.

Every example works on accounts of its own in one database (CREATE DATABASE per example would
dominate the run time); the invariants are checked over the whole database, so an example
that broke the ledger would also fail all the following ones."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from regio_billing.database import migrate, open_pool
from regio_billing.ledger import Ledger
from regio_billing.pricing import Prices
from regio_billing.results import ReserveOutcome
from regio_billing.settings import BillingSettings
from regio_common.catalogue import Catalogue
from regio_common.money import NANO_PER_EUR, request_cost_nano
from regio_devstack.servers import PostgresServer
from tests.integration.billing.billing_helpers import query
from tests.integration.billing.test_billing_random_walk import PROMOTIONS, Hold, Model, expire

T = TypeVar("T")
RULES = {
    "top_up",
    "replay_top_up",
    "refund",
    "reserve",
    "settle",
    "settle_late",
    "duplicate_settle",
    "release",
    "expire_and_sweep",
    "change_price",
}
EUR = NANO_PER_EUR
ACCOUNTS_PER_EXAMPLE = 3
START_PRICES = Prices(29_000_000, 49_000_000)  # liv in the catalogue
OPENING_CREDIT = 20 * EUR
# Derandomized: every run explores the same examples, so that the check that every rule ran
# is deterministic and a failure reproduces; widen max_examples locally to explore more.
RUN = settings(
    max_examples=40,
    stateful_step_count=30,
    derandomize=True,
    deadline=None,
    database=None,  # no example database written into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(
        self,
        ledger: Ledger,
        database_url: str,
        loop: asyncio.AbstractEventLoop,
        steps_taken: Counter[str],
    ) -> None:
        super().__init__()
        self.ledger = ledger
        self.steps_taken = steps_taken
        self.database_url = database_url
        self.loop = loop
        example = uuid.uuid4().hex[:8]
        self.accounts = [f"sm-{example}-{n}" for n in range(ACCOUNTS_PER_EXAMPLE)]
        self.model = Model(
            prices=START_PRICES,
            lots={account: [] for account in self.accounts},
            held=dict.fromkeys(self.accounts, 0),
        )
        self.prefix = f"sm-{example}"
        self.counter = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def new_key(self, kind: str) -> str:
        self.counter += 1
        return f"{self.prefix}-{kind}-{self.counter}"

    def holds(self, status: str) -> list[str]:
        return sorted(key for key, hold in self.model.holds.items() if hold.status == status)

    def settled(self) -> list[str]:
        """Holds with a settlement: settled ones, and released ones whose usage came late."""
        return sorted(key for key, hold in self.model.holds.items() if hold.charged is not None)

    def released_unsettled(self) -> list[str]:
        return sorted(
            key
            for key, hold in self.model.holds.items()
            if hold.charged is None and hold.status == "released"
        )

    @initialize()
    def start(self) -> None:
        # Earlier examples changed the price; each one starts from the catalogue's.
        self.run(self.ledger.publish_prices({"liv": START_PRICES}))
        # Opening credit for all accounts but the last, which starts empty (refusals).
        for owner in self.accounts[:-1]:
            key = self.new_key("pay")
            self.run(self.ledger.add_credits(owner, OPENING_CREDIT, key, "opening"))
            self.model.pay(owner, key, OPENING_CREDIT)

    # -- payments -------------------------------------------------------------------------
    @rule(
        account=st.integers(0, ACCOUNTS_PER_EXAMPLE - 1),
        amount=st.one_of(
            st.integers(1, 49).map(lambda eur: eur * EUR),  # no promotion
            st.integers(1, 10**7),  # a few cents at most
            st.sampled_from([50, 100, 150]).map(lambda eur: eur * EUR),  # at a threshold
        ),
    )
    def top_up(self, account: int, amount: int) -> None:
        self.steps_taken["top_up"] += 1
        owner, key = self.accounts[account], self.new_key("pay")
        self.run(self.ledger.add_credits(owner, amount, key, "state machine"))
        self.model.pay(owner, key, amount)

    @precondition(lambda self: bool(self.model.payments))
    @rule(pick=st.integers(0))
    def replay_top_up(self, pick: int) -> None:
        self.steps_taken["replay_top_up"] += 1
        keys = sorted(self.model.payments)
        key = keys[pick % len(keys)]
        account, amount = self.model.payments[key]
        self.run(self.ledger.add_credits(account, amount, key, "replayed"))  # no second credit

    @precondition(lambda self: bool(set(self.model.payments) - set(self.model.refunds)))
    @rule(pick=st.integers(0))
    def refund(self, pick: int) -> None:
        """Refund a payment, then repeat the call: the repeat answers the first refund."""
        self.steps_taken["refund"] += 1
        keys = sorted(set(self.model.payments) - set(self.model.refunds))
        key = keys[pick % len(keys)]
        first = self.run(self.ledger.refund_payment(key))
        self.model.refunds[key] = self.model.refund(key)
        assert (first.refunded_nano, first.clawed_back_nano) == self.model.refunds[key]
        repeat = self.run(self.ledger.refund_payment(key))
        assert repeat.already_refunded
        assert (repeat.refunded_nano, repeat.clawed_back_nano) == self.model.refunds[key]

    # -- holds ----------------------------------------------------------------------------
    @rule(
        account=st.integers(0, ACCOUNTS_PER_EXAMPLE - 1),
        prompt=st.integers(0, 2_000),
        completion=st.integers(0, 2_000),
    )
    def reserve(self, account: int, prompt: int, completion: int) -> None:
        self.steps_taken["reserve"] += 1
        owner, transaction = self.accounts[account], self.new_key("txn")
        prices = self.model.prices
        amount = request_cost_nano(
            prompt, completion, prices.input_price_nano, prices.output_price_nano
        )
        result = self.run(
            self.ledger.reserve(
                transaction_id=transaction,
                account_id=owner,
                route="liv",
                region="eu",
                max_prompt_tokens=prompt,
                max_completion_tokens=completion,
                ttl_seconds=600,
            )
        )
        if amount <= self.model.available(owner):
            assert (result.outcome, result.held_nano) == (ReserveOutcome.HELD, amount)
            self.model.holds[transaction] = Hold(owner, amount, prices, prompt, completion)
            self.model.held[owner] += amount
        else:
            assert result.outcome == ReserveOutcome.INSUFFICIENT_FUNDS
            assert result.available_nano == self.model.available(owner)

    @precondition(lambda self: bool(self.holds("open")))
    @rule(
        pick=st.integers(0),
        prompt=st.integers(0, 2_500),
        completion=st.integers(0, 2_500),
        billable=st.booleans(),
    )
    def settle(self, pick: int, prompt: int, completion: int, billable: bool) -> None:
        self.steps_taken["settle"] += 1
        open_holds = self.holds("open")
        self._settle(open_holds[pick % len(open_holds)], prompt, completion, billable)

    @precondition(lambda self: bool(self.released_unsettled()))
    @rule(pick=st.integers(0), prompt=st.integers(0, 2_500), completion=st.integers(0, 2_500))
    def settle_late(self, pick: int, prompt: int, completion: int) -> None:
        """Usage of a hold released (or expired) before it arrived: charged nothing."""
        self.steps_taken["settle_late"] += 1
        late = self.released_unsettled()
        self._settle(late[pick % len(late)], prompt, completion, True)

    def _settle(self, transaction: str, prompt: int, completion: int, billable: bool) -> None:
        hold = self.model.holds[transaction]
        result = self.run(self.ledger.settle(transaction, prompt, completion, billable))
        if hold.status == "released":
            expected = 0  # the hold stays released; the zero settlement absorbs repeats
        else:
            expected = hold.charge_for(prompt, completion, billable)
            self.model.held[hold.account] -= hold.amount
            self.model.consume(hold.account, expected)
            hold.status = "settled"
        assert (result.charged_nano, result.already_settled) == (expected, False)
        hold.charged = expected

    @precondition(lambda self: bool(self.settled()))
    @rule(pick=st.integers(0), prompt=st.integers(0, 2_500), completion=st.integers(0, 2_500))
    def duplicate_settle(self, pick: int, prompt: int, completion: int) -> None:
        """A redelivered (or different) usage report answers the first settlement."""
        self.steps_taken["duplicate_settle"] += 1
        settled = self.settled()
        transaction = settled[pick % len(settled)]
        result = self.run(self.ledger.settle(transaction, prompt, completion, True))
        assert (result.charged_nano, result.already_settled) == (
            self.model.holds[transaction].charged,
            True,
        )

    @precondition(lambda self: bool(self.model.holds))
    @rule(pick=st.integers(0))
    def release(self, pick: int) -> None:
        self.steps_taken["release"] += 1
        keys = sorted(self.model.holds)
        transaction = keys[pick % len(keys)]
        hold = self.model.holds[transaction]
        released = self.run(self.ledger.release(transaction, "state machine"))
        assert released is (hold.status == "open")
        self._released(hold)

    @precondition(lambda self: bool(self.holds("open")))
    @rule(pick=st.integers(0))
    def expire_and_sweep(self, pick: int) -> None:
        self.steps_taken["expire_and_sweep"] += 1
        open_holds = self.holds("open")
        transaction = open_holds[pick % len(open_holds)]
        self.run(expire(self.database_url, transaction))
        assert self.run(self.ledger.sweep_expired_holds()) == 1
        self._released(self.model.holds[transaction])

    def _released(self, hold: Hold) -> None:
        if hold.status == "open":
            hold.status = "released"
            self.model.held[hold.account] -= hold.amount

    # No precondition (e.g. "some hold is open"): hypothesis draws from constants it finds in
    # the modules loaded, so even with derandomize the sequence changes with the code around
    # it, and a rule that is only sometimes eligible was seen never to run.
    @rule(
        # Up to €100 per 1M tokens: dear enough to refuse a hold now and then.
        input_price=st.integers(0, 10**5).map(lambda n: n * 10**6),
        output_price=st.integers(0, 10**5).map(lambda n: n * 10**6),
    )
    def change_price(self, input_price: int, output_price: int) -> None:
        """New holds use the new price; open holds keep theirs."""
        self.steps_taken["change_price"] += 1
        prices = Prices(input_price, output_price)
        self.run(self.ledger.publish_prices({"liv": prices}))
        self.model.prices = prices

    # -- after every step -----------------------------------------------------------------
    @invariant()
    def ledger_matches_the_model(self) -> None:
        assert self.run(self.ledger.check_invariants()) == []
        for account in self.accounts:
            balance = self.run(self.ledger.get_balance(account))
            assert (balance.balance_nano, balance.held_nano) == (
                self.model.balance(account),
                self.model.held[account],
            ), account
        rows = self.run(
            query(
                self.database_url,
                "SELECT l.account_id, l.kind, p.idempotency_key, l.remaining_nano"
                " FROM billing.lots l JOIN billing.payments p ON p.id = l.payment_id"
                " WHERE starts_with(l.account_id, %s)",
                self.prefix,
            )
        )
        expected = [
            (account, lot.kind, lot.payment_key, lot.remaining)
            for account, lots in self.model.lots.items()
            for lot in lots
        ]
        assert sorted(rows) == sorted(expected)
        statuses = self.run(
            query(
                self.database_url,
                "SELECT transaction_id, status FROM billing.holds"
                " WHERE starts_with(transaction_id, %s)",
                self.prefix,
            )
        )
        assert dict(statuses) == {key: hold.status for key, hold in self.model.holds.items()}


def test_ledger_state_machine(postgres_server: PostgresServer) -> None:
    database_url = postgres_server.create_database(f"sm_{uuid.uuid4().hex[:12]}")
    loop = asyncio.new_event_loop()
    try:
        ledger, close = loop.run_until_complete(open_ledger(database_url))
        steps_taken: Counter[str] = Counter()

        class OnThisDatabase(LedgerMachine):
            def __init__(self) -> None:
                super().__init__(ledger, database_url, loop, steps_taken)

        try:
            run_state_machine_as_test(OnThisDatabase, settings=RUN)
        finally:
            loop.run_until_complete(close())
    finally:
        loop.close()
    print(f"\nstate machine steps: {dict(sorted(steps_taken.items()))}")
    # Every kind of step really ran (a precondition that never holds would hide a rule).
    assert set(steps_taken) == RULES, steps_taken


async def open_ledger(database_url: str) -> tuple[Ledger, Any]:
    await migrate(database_url)
    pool = await open_pool(database_url, max_size=2)
    ledger = Ledger(pool, Catalogue.load(BillingSettings().catalogue_path))
    now = datetime.now(UTC)
    for n, (minimum, percent) in enumerate(PROMOTIONS):
        await ledger.create_promotion(
            name=f"state-machine-{n}",
            min_payment_nano=minimum,
            bonus_percent=percent,
            starts_at=now - timedelta(hours=1),
            ends_at=now + timedelta(hours=1),
        )
    return ledger, pool.close
