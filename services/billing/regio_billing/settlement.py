"""Settling many holds in one transaction: the throughput path of the usage consumer, and the
single path of every settlement (`Ledger.settle` is a batch of one).

Per-record guarantees are those of a single settlement: each hold is locked, a transaction id
with a settlement answers that settlement (no second charge), every charge is its own journal
entry and lot consumption, and the settlements table's primary key is the last guard (I5).
What is shared: each statement covers the whole batch, each account's cached balance and held
amount is updated once, and the statements are sent pipelined (the caller opens the pipeline):
three round trips per batch: lock and read its holds; write what needs only the hold locks;
then lock the accounts and send all their writes with the commit, so that nothing waits for
billing while account rows are locked.

Lock order (as everywhere in the ledger): all hold rows in transaction_id order, then the
account rows in account_id order, then the lots of those accounts in (account, consumption)
order, then the usage windows of holds that track limits (usage_windows.py). Two batches, a
batch and a single settle, or a batch and the sweeper can therefore never wait on each other in
a cycle.

Reported usage is validated against the hold (cheaply: the hold row is read anyway): a record
naming another account or route than the hold's is refused (nothing charged, nothing written;
the hold is left to expire), and token counts above the hold's reserved bounds are clamped to
them, settled and flagged (`usage_over_hold`)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing import usage_windows
from regio_billing.journal import REVENUE_ACCOUNT, customer_ledger_account
from regio_billing.lots import CONSUMPTION_ORDER
from regio_billing.pricing import Prices, settlement_charge
from regio_billing.usage_limits import account_scope, key_scope

log = structlog.get_logger()

Connection = AsyncConnection[TupleRow]


@dataclass(frozen=True)
class UsageToSettle:
    """The exact usage a worker reported for one transaction."""

    transaction_id: str
    prompt_tokens: int
    completion_tokens: int
    billable: bool
    # Who the worker says the usage belongs to; checked against the hold when given (the
    # usage stream carries them, the Settle RPC does not).
    account_id: str = ""
    route: str = ""


class UsageProblem(enum.Enum):
    """What validation found wrong with a usage record (the label of usage_rejected)."""

    OVER_HOLD = "over_hold"  # more tokens than reserved: clamped to the hold, settled
    ACCOUNT_MISMATCH = "account_mismatch"  # refused
    ROUTE_MISMATCH = "route_mismatch"  # refused (a route the hold was not reserved for)


class SettleOutcome(enum.Enum):
    SETTLED = "settled"  # settled now (charged_nano may be 0: not billable, or hold released)
    DUPLICATE = "duplicate"  # settled before (in an earlier commit or earlier in this batch)
    NO_HOLD = "no_hold"  # nothing was reserved for this transaction, so nothing is charged
    REFUSED = "refused"  # the record contradicts its hold (see `problem`); nothing is charged


@dataclass(frozen=True)
class SettledUsage:
    usage: UsageToSettle
    outcome: SettleOutcome
    charged_nano: int
    problem: UsageProblem | None = None


@dataclass(frozen=True)
class _LockedHold:
    transaction_id: str
    account_id: str
    amount_nano: int
    prices: Prices
    status: str
    previous_charge_nano: int | None  # set when a settlement already exists
    route: str
    key_id: str
    tracks_limits: bool
    max_prompt_tokens: int | None  # None on holds older than the bounds' column
    max_completion_tokens: int | None


@dataclass(frozen=True)
class _NewSettlement:
    usage: UsageToSettle  # as settled: clamped to the hold's bounds when over them
    hold: _LockedHold
    charged_nano: int
    over_hold: bool = False


async def settle_batch(conn: Connection, usages: Sequence[UsageToSettle]) -> list[SettledUsage]:
    """Settle every usage; answers one result per usage, in the given order.

    Runs inside the caller's transaction: everything commits or nothing does."""
    if not usages:
        return []
    holds = await _lock_holds(conn, sorted({usage.transaction_id for usage in usages}))
    results: list[SettledUsage] = []
    new: dict[str, _NewSettlement] = {}
    for usage in usages:
        hold = holds.get(usage.transaction_id)
        if hold is None:
            results.append(SettledUsage(usage, SettleOutcome.NO_HOLD, 0))
        elif hold.previous_charge_nano is not None:
            results.append(SettledUsage(usage, SettleOutcome.DUPLICATE, hold.previous_charge_nano))
        elif usage.transaction_id in new:  # delivered twice in one batch: the first one counts
            charged = new[usage.transaction_id].charged_nano
            results.append(SettledUsage(usage, SettleOutcome.DUPLICATE, charged))
        elif (problem := _contradiction(usage, hold)) is not None:
            results.append(SettledUsage(usage, SettleOutcome.REFUSED, 0, problem))
        else:
            settlement = _decide(usage, hold)
            new[usage.transaction_id] = settlement
            flag = UsageProblem.OVER_HOLD if settlement.over_hold else None
            results.append(
                SettledUsage(usage, SettleOutcome.SETTLED, settlement.charged_nano, flag)
            )
    if new:
        await _write(conn, list(new.values()))
    return results


def _contradiction(usage: UsageToSettle, hold: _LockedHold) -> UsageProblem | None:
    """A record that names another account or route than its hold is not this hold's usage
    (a confused or compromised worker): it must not be charged to the hold's account."""
    if usage.account_id and usage.account_id != hold.account_id:
        problem = UsageProblem.ACCOUNT_MISMATCH
    elif usage.route and usage.route != hold.route:
        problem = UsageProblem.ROUTE_MISMATCH
    else:
        return None
    log.warning(
        "usage_refused",
        reason=problem.value,
        transaction_id=hold.transaction_id,
        account_id=hold.account_id,
        reported_account_id=usage.account_id,
        route=hold.route,
        reported_route=usage.route,
    )
    return problem


def _within_bounds(usage: UsageToSettle, hold: _LockedHold) -> UsageToSettle:
    """The usage, its token counts clamped to what the hold reserved."""
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    if hold.max_prompt_tokens is not None:
        prompt = min(prompt, hold.max_prompt_tokens)
    if hold.max_completion_tokens is not None:
        completion = min(completion, hold.max_completion_tokens)
    if (prompt, completion) == (usage.prompt_tokens, usage.completion_tokens):
        return usage
    log.warning(
        "usage_over_hold",
        transaction_id=hold.transaction_id,
        account_id=hold.account_id,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        max_prompt_tokens=hold.max_prompt_tokens,
        max_completion_tokens=hold.max_completion_tokens,
    )
    return replace(usage, prompt_tokens=prompt, completion_tokens=completion)


def _decide(reported: UsageToSettle, hold: _LockedHold) -> _NewSettlement:
    usage = _within_bounds(reported, hold)
    over_hold = usage is not reported
    if hold.status != "open":
        # Released (expired or given up) before the usage arrived: the customer was told
        # nothing is charged. The zero settlement keeps redeliveries idempotent.
        log.warning(
            "settle_after_release", transaction_id=hold.transaction_id, account_id=hold.account_id
        )
        return _NewSettlement(usage, hold, 0, over_hold)
    charge = settlement_charge(
        usage.prompt_tokens, usage.completion_tokens, usage.billable, hold.prices, hold.amount_nano
    )
    if charge.capped:
        log.error(
            "settle_charge_capped_at_hold",
            transaction_id=hold.transaction_id,
            account_id=hold.account_id,
            cost_nano=charge.uncapped_nano,
            hold_nano=hold.amount_nano,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
    return _NewSettlement(usage, hold, charge.amount_nano, over_hold)


async def _lock_holds(conn: Connection, transaction_ids: list[str]) -> dict[str, _LockedHold]:
    # Locking the holds serialises concurrent settlements of one transaction.
    holds = await conn.execute(
        "SELECT transaction_id, account_id, amount_nano, input_price_nano, output_price_nano,"
        " status, route, key_id, tracks_limits, max_prompt_tokens, max_completion_tokens"
        " FROM billing.holds WHERE transaction_id = ANY(%b::text[])"
        " ORDER BY transaction_id FOR UPDATE",
        (transaction_ids,),
    )
    # A statement of its own, run after the locks are granted: a READ COMMITTED statement sees
    # what committed before it started, so a settlement that a concurrent transaction committed
    # while we waited for its hold is seen (a join in the locking statement would not be
    # re-read for the waited-for row).
    settled = await conn.execute(
        "SELECT transaction_id, charged_nano FROM billing.settlements"
        " WHERE transaction_id = ANY(%b::text[])",
        (transaction_ids,),
    )
    rows = await holds.fetchall()
    previous: dict[str, int] = {row[0]: row[1] for row in await settled.fetchall()}
    return {
        row[0]: _LockedHold(
            transaction_id=row[0],
            account_id=row[1],
            amount_nano=row[2],
            prices=Prices(input_price_nano=row[3], output_price_nano=row[4]),
            status=row[5],
            previous_charge_nano=previous.get(row[0]),
            route=row[6],
            key_id=row[7],
            tracks_limits=row[8],
            max_prompt_tokens=row[9],
            max_completion_tokens=row[10],
        )
        for row in rows
    }


async def _write(conn: Connection, settlements: list[_NewSettlement]) -> None:
    # First what only needs the hold locks (new rows), then, as briefly as possible, the
    # account and lot rows that concurrent reserves and settlements of those accounts share.
    closing = [s for s in settlements if s.hold.status == "open"]
    charged = [s for s in closing if s.charged_nano > 0]
    entries = await _record_settlements(conn, settlements, charged)
    if closing:
        await _lock_accounts(conn, sorted({s.hold.account_id for s in closing}))
        await _update_accounts(conn, closing)
        await _consume_lots(conn, charged, entries)
        await _count_in_usage_windows(conn, [s for s in closing if s.hold.tracks_limits])
    if log.is_enabled_for(logging.DEBUG):  # one line per record only when asked for
        for s in settlements:
            log.debug(
                "settled",
                transaction_id=s.hold.transaction_id,
                account_id=s.hold.account_id,
                charged_nano=s.charged_nano,
                hold_nano=s.hold.amount_nano,
                prompt_tokens=s.usage.prompt_tokens,
                completion_tokens=s.usage.completion_tokens,
                billable=s.usage.billable,
            )


async def _count_in_usage_windows(conn: Connection, tracked: list[_NewSettlement]) -> None:
    """Settled tokens into the minute, charges into the day and month, of the key and the
    account of each hold that tracks limits: one statement for the batch, none without."""
    if not tracked:
        return
    tokens: list[tuple[str, int]] = []
    spent: list[tuple[str, int]] = []
    for s in tracked:
        scopes = [account_scope(s.hold.account_id)]
        if s.hold.key_id:
            scopes.append(key_scope(s.hold.key_id))
        for scope in scopes:
            tokens.append((scope, s.usage.prompt_tokens + s.usage.completion_tokens))
            spent.append((scope, s.charged_nano))
    await usage_windows.add_settled_usage(
        conn, usage_windows.summed(tokens), usage_windows.summed(spent)
    )


# One statement writes what a batch adds under its hold locks: a balanced journal entry per
# charge (customer -> revenue, reference key the transaction id; none for a zero charge), its
# two postings, the closing of the open holds and a settlement row per transaction pointing at
# its entry; it answers the entries' ids, which the lot movements need. Only the primary key
# finds the rows to read or change (`closing` holds are open: their locks keep them so), so no
# plan depends on table statistics, which lag behind bulk changes (a status filter once made
# the planner scan every open hold). No ON CONFLICT: an existing charge entry or settlement
# (unreachable behind the hold locks) fails the whole batch rather than charging twice; the
# settlements' primary key is the last guard of I5. Arrays go in binary (%b): psycopg's text
# arrays quote every element in Python.
RECORD_SETTLEMENTS = (
    "WITH entry AS ("
    " INSERT INTO billing.journal (kind, reference_key, memo)"
    " SELECT 'charge', reference_key, '' FROM unnest(%(charged)b::text[]) AS reference_key"
    " RETURNING reference_key, id),"
    " posted AS ("
    " INSERT INTO billing.postings (journal_id, ledger_account, amount_nano)"
    " SELECT entry.id, p.ledger_account, p.amount_nano FROM entry"
    " JOIN unnest(%(charged)b::text[], %(customers)b::text[], %(charges)b::bigint[])"
    " AS c(reference_key, customer, amount) USING (reference_key)"
    " CROSS JOIN LATERAL (VALUES (c.customer, -c.amount), (%(revenue)s, c.amount))"
    " AS p(ledger_account, amount_nano)),"
    " closed AS ("
    " UPDATE billing.holds SET status = 'settled', closed_at = now(), release_reason = NULL"
    " WHERE transaction_id = ANY(%(closing)b::text[])),"
    " settled AS ("
    " INSERT INTO billing.settlements (transaction_id, account_id, prompt_tokens,"
    " completion_tokens, charged_nano, billable, usage_over_hold, journal_id)"
    " SELECT v.*, entry.id FROM unnest(%(transactions)b::text[], %(accounts)b::text[],"
    " %(prompt)b::bigint[], %(completion)b::bigint[], %(settled_charges)b::bigint[],"
    " %(billable)b::boolean[], %(over_hold)b::boolean[]) AS v(transaction_id, account_id,"
    " prompt_tokens, completion_tokens, charged, billable, over_hold)"
    " LEFT JOIN entry ON entry.reference_key = v.transaction_id)"
    " SELECT reference_key, id FROM entry"
)


async def _record_settlements(
    conn: Connection, settlements: list[_NewSettlement], charged: list[_NewSettlement]
) -> dict[str, int]:
    """Write the batch's entries, postings, closed holds and settlement rows (see
    RECORD_SETTLEMENTS); answers the charge entry id of each charged transaction."""
    cursor = await conn.execute(
        RECORD_SETTLEMENTS,
        {
            "charged": [s.hold.transaction_id for s in charged],
            "customers": [customer_ledger_account(s.hold.account_id) for s in charged],
            "charges": [s.charged_nano for s in charged],
            "revenue": REVENUE_ACCOUNT,
            "closing": [s.hold.transaction_id for s in settlements if s.hold.status == "open"],
            "transactions": [s.hold.transaction_id for s in settlements],
            "accounts": [s.hold.account_id for s in settlements],
            "prompt": [s.usage.prompt_tokens for s in settlements],
            "completion": [s.usage.completion_tokens for s in settlements],
            "settled_charges": [s.charged_nano for s in settlements],
            "billable": [s.usage.billable for s in settlements],
            "over_hold": [s.over_hold for s in settlements],
        },
    )
    # Its own round trip, before the account locks: they are not held while it travels.
    return dict(await cursor.fetchall())


async def _lock_accounts(conn: Connection, account_ids: list[str]) -> None:
    # NO KEY UPDATE, the lock an UPDATE of non-key columns takes: it does not wait for the KEY
    # SHARE locks that foreign key checks of other transactions hold on these rows (a hold
    # being inserted), so those can never join a lock cycle with two batches.
    await conn.execute(
        "SELECT 1 FROM billing.accounts WHERE account_id = ANY(%b::text[])"
        " ORDER BY account_id FOR NO KEY UPDATE",
        (account_ids,),
    )


async def _update_accounts(conn: Connection, closing: list[_NewSettlement]) -> None:
    """Once per account: take the charges from the balance and the holds from held."""
    charged: dict[str, int] = {}
    released: dict[str, int] = {}
    for s in closing:
        account = s.hold.account_id
        charged[account] = charged.get(account, 0) + s.charged_nano
        released[account] = released.get(account, 0) + s.hold.amount_nano
    await conn.execute(
        "UPDATE billing.accounts AS a SET balance_nano = a.balance_nano - v.charged,"
        " held_nano = a.held_nano - v.released"
        " FROM unnest(%b::text[], %b::bigint[], %b::bigint[]) AS v(account_id, charged, released)"
        " WHERE a.account_id = v.account_id",
        (list(charged), list(charged.values()), [released[a] for a in charged]),
    )


# Each charge is taken from its account's lots in consumption order (see lots.py), in SQL, so
# that the batch's statements under the account locks need no answer from billing in between:
# they travel with the commit in one round trip, and the locks are held no longer than
# PostgreSQL takes to run them. Per account, the charges (in batch order) and the lots (in
# consumption order) are laid end to end; a movement is the overlap of a charge's interval
# with a lot's. Every touched lot is updated once. A charge the lots cannot cover (impossible
# while I8 holds: lots sum to the balance, which covers the holds) fails the whole batch.
CONSUME_LOTS = (
    "WITH charge AS ("
    " SELECT c.account_id, c.journal_id, c.amount,"
    " (sum(c.amount) OVER (PARTITION BY c.account_id ORDER BY c.n))::bigint - c.amount AS before"
    " FROM unnest(%(accounts)b::text[], %(entries)b::bigint[], %(amounts)b::bigint[])"
    " WITH ORDINALITY AS c(account_id, journal_id, amount, n)),"
    " lot AS ("
    " SELECT id, account_id, remaining_nano AS remaining,"
    f" (sum(remaining_nano) OVER (PARTITION BY account_id ORDER BY {CONSUMPTION_ORDER}))::bigint"
    " - remaining_nano AS before"
    " FROM (SELECT id, account_id, kind, remaining_nano FROM billing.lots"
    " WHERE account_id = ANY(%(account_ids)b::text[]) AND remaining_nano > 0"
    f" ORDER BY account_id, {CONSUMPTION_ORDER} FOR NO KEY UPDATE) AS locked),"
    " part AS ("
    " SELECT lot.id AS lot_id, charge.journal_id,"
    " least(charge.before + charge.amount, lot.before + lot.remaining)"
    " - greatest(charge.before, lot.before) AS amount"
    " FROM charge JOIN lot USING (account_id)"
    " WHERE charge.before < lot.before + lot.remaining"
    " AND lot.before < charge.before + charge.amount),"
    " taken AS ("
    " UPDATE billing.lots AS l SET remaining_nano = l.remaining_nano - t.amount"
    " FROM (SELECT lot_id, sum(amount)::bigint AS amount FROM part GROUP BY lot_id) AS t"
    " WHERE l.id = t.lot_id),"
    " moved AS ("
    " INSERT INTO billing.lot_movements (lot_id, journal_id, amount_nano)"
    " SELECT lot_id, journal_id, -amount FROM part)"
    " SELECT billing.refuse_uncovered_charge(charge.journal_id,"
    " (charge.amount - coalesce(sum(part.amount), 0))::bigint)"
    " FROM charge LEFT JOIN part USING (journal_id)"
    " GROUP BY charge.journal_id, charge.amount"
    " HAVING coalesce(sum(part.amount), 0) < charge.amount"
)


async def _consume_lots(
    conn: Connection, charged: list[_NewSettlement], entries: dict[str, int]
) -> None:
    """Take the charges from their accounts' lots (see CONSUME_LOTS); `entries`: the charge
    entry id of each transaction."""
    if not charged:
        return
    await conn.execute(
        CONSUME_LOTS,
        {
            "accounts": [s.hold.account_id for s in charged],
            "entries": [entries[s.hold.transaction_id] for s in charged],
            "amounts": [s.charged_nano for s in charged],
            "account_ids": sorted({s.hold.account_id for s in charged}),
        },
    )
