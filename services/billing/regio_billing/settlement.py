"""Settling many holds in one transaction: the throughput path of the usage consumer, and the
single path of every settlement (`Ledger.settle` is a batch of one).

Per-record guarantees are those of a single settlement: each hold is locked, a transaction id
with a settlement answers that settlement (no second charge), every charge is its own journal
entry and lot consumption, and the settlements table's primary key is the last guard (I5).
What is shared: each statement covers the whole batch, each account's cached balance and held
amount is updated once, and the statements are sent pipelined where no answer is needed in
between (the caller opens the pipeline): about three round trips and one commit per batch.

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
        " FROM billing.holds WHERE transaction_id = ANY(%s)"
        " ORDER BY transaction_id FOR UPDATE",
        (transaction_ids,),
    )
    # A statement of its own, run after the locks are granted: a READ COMMITTED statement sees
    # what committed before it started, so a settlement that a concurrent transaction committed
    # while we waited for its hold is seen (a join in the locking statement would not be
    # re-read for the waited-for row).
    settled = await conn.execute(
        "SELECT transaction_id, charged_nano FROM billing.settlements"
        " WHERE transaction_id = ANY(%s)",
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
    await _post_charges(conn, charged)
    await _record_settlements(conn, settlements)
    if closing:
        await _lock_accounts(conn, sorted({s.hold.account_id for s in closing}))
        await _update_accounts(conn, closing)
        await _consume_lots(conn, charged)
        await _count_in_usage_windows(conn, [s for s in closing if s.hold.tracks_limits])
    for s in settlements:
        log.info(
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


async def _post_charges(conn: Connection, charged: list[_NewSettlement]) -> None:
    """One balanced journal entry per charge (customer -> revenue), its reference key the
    transaction id; no entry at all for a zero charge. No ON CONFLICT: an existing charge
    entry (unreachable behind the hold locks) fails the batch rather than charging twice."""
    if not charged:
        return
    entries: list[str] = []
    accounts: list[str] = []
    amounts: list[int] = []
    for s in charged:
        entries += [s.hold.transaction_id, s.hold.transaction_id]
        accounts += [customer_ledger_account(s.hold.account_id), REVENUE_ACCOUNT]
        amounts += [-s.charged_nano, s.charged_nano]
    await conn.execute(
        "WITH entry AS ("
        " INSERT INTO billing.journal (kind, reference_key, memo)"
        " SELECT 'charge', reference_key, '' FROM unnest(%s::text[]) AS reference_key"
        " RETURNING reference_key, id)"
        " INSERT INTO billing.postings (journal_id, ledger_account, amount_nano)"
        " SELECT entry.id, p.ledger_account, p.amount_nano FROM entry"
        " JOIN unnest(%s::text[], %s::text[], %s::bigint[])"
        " AS p(reference_key, ledger_account, amount_nano) USING (reference_key)",
        ([s.hold.transaction_id for s in charged], entries, accounts, amounts),
    )


async def _record_settlements(conn: Connection, settlements: list[_NewSettlement]) -> None:
    """Close the open holds and write one settlement row per transaction, pointing at its
    charge entry (its primary key is the guard of I5: a second settlement of a transaction
    fails the whole batch)."""
    await conn.execute(
        "WITH closed AS ("
        " UPDATE billing.holds SET status = 'settled', closed_at = now(), release_reason = NULL"
        " WHERE transaction_id = ANY(%s) AND status = 'open')"
        " INSERT INTO billing.settlements (transaction_id, account_id, prompt_tokens,"
        " completion_tokens, charged_nano, billable, usage_over_hold, journal_id)"
        " SELECT v.*, (SELECT j.id FROM billing.journal j"
        "  WHERE j.kind = 'charge' AND j.reference_key = v.transaction_id AND v.charged > 0)"
        " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[],"
        " %s::boolean[], %s::boolean[]) AS v(transaction_id, account_id, prompt_tokens,"
        " completion_tokens, charged, billable, over_hold)",
        (
            [s.hold.transaction_id for s in settlements if s.hold.status == "open"],
            [s.hold.transaction_id for s in settlements],
            [s.hold.account_id for s in settlements],
            [s.usage.prompt_tokens for s in settlements],
            [s.usage.completion_tokens for s in settlements],
            [s.charged_nano for s in settlements],
            [s.usage.billable for s in settlements],
            [s.over_hold for s in settlements],
        ),
    )


async def _lock_accounts(conn: Connection, account_ids: list[str]) -> None:
    await conn.execute(
        "SELECT 1 FROM billing.accounts WHERE account_id = ANY(%s) ORDER BY account_id FOR UPDATE",
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
        " FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS v(account_id, charged, released)"
        " WHERE a.account_id = v.account_id",
        (list(charged), list(charged.values()), [released[a] for a in charged]),
    )


async def _consume_lots(conn: Connection, charged: list[_NewSettlement]) -> None:
    """Take each charge from its account's lots in consumption order (see lots.py), recording
    one movement per (charge entry, lot), and update each touched lot once."""
    if not charged:
        return
    cursor = await conn.execute(
        "SELECT account_id, id, remaining_nano FROM billing.lots"
        " WHERE account_id = ANY(%s) AND remaining_nano > 0"
        f" ORDER BY account_id, {CONSUMPTION_ORDER} FOR UPDATE",
        (sorted({s.hold.account_id for s in charged}),),
    )
    lots_of: dict[str, list[list[int]]] = {}  # account -> [[lot id, remaining], ...] in order
    for account_id, lot_id, remaining in await cursor.fetchall():
        lots_of.setdefault(account_id, []).append([lot_id, remaining])
    movement_lots: list[int] = []
    movement_entries: list[str] = []
    movement_amounts: list[int] = []
    taken: dict[int, int] = {}
    for s in charged:
        left = s.charged_nano
        for lot in lots_of.get(s.hold.account_id, []):
            if left == 0:
                break
            part = min(left, lot[1])
            if part == 0:
                continue
            lot[1] -= part
            left -= part
            movement_lots.append(lot[0])
            movement_entries.append(s.hold.transaction_id)
            movement_amounts.append(-part)
            taken[lot[0]] = taken.get(lot[0], 0) + part
        if left:
            raise RuntimeError(
                f"lots of {s.hold.account_id} cannot cover {s.charged_nano} (short by {left})"
            )
    await conn.execute(
        "WITH taken AS ("
        " UPDATE billing.lots AS l SET remaining_nano = l.remaining_nano - v.amount"
        " FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, amount) WHERE l.id = v.id)"
        " INSERT INTO billing.lot_movements (lot_id, journal_id, amount_nano)"
        " SELECT v.lot_id, j.id, v.amount"
        " FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) AS v(lot_id, reference_key, amount)"
        " JOIN billing.journal j ON j.kind = 'charge' AND j.reference_key = v.reference_key",
        (list(taken), list(taken.values()), movement_lots, movement_entries, movement_amounts),
    )
