"""Concurrent Reserves of one account on one route share a statement.

Every hold locks its account's row until it commits, so the holds of one busy account (many
requests of one application at once) queue behind each other anyway, one commit each. Here, a
hold that arrives while a statement of its account and route is running waits for it, and the
holds that gathered meanwhile go together in the next statement (`hold_together`): one round
trip, one row lock and one commit for all of them. A hold that finds no statement running goes
at once, alone: nothing waits for a batch to fill, so a lone request pays nothing.

When the credit does not cover a gathered batch as a whole (or one of its transaction ids is
already held), each of its holds is decided on its own, in arrival order, exactly as alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing.database import BillingPool
from regio_billing.hold_statements import hold_one, hold_together
from regio_billing.limited_reserve import PricedHold
from regio_billing.metrics import BillingMetrics
from regio_billing.results import ReserveOutcome, ReserveResult

# Most holds in one statement.
MAX_BATCH = 64

Connection = AsyncConnection[TupleRow]
_BatchKey = tuple[str, str, int | None]  # account, route, price version


@dataclass
class _Waiting:
    hold: PricedHold
    answer: asyncio.Future[ReserveResult | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class HoldBatcher:
    def __init__(
        self, pool: BillingPool, metrics: BillingMetrics, max_batch: int = MAX_BATCH
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._max_batch = max_batch
        self._waiting: dict[_BatchKey, list[_Waiting]] = {}
        self._running: dict[_BatchKey, asyncio.Task[None]] = {}

    async def hold(self, hold: PricedHold, price_version_id: int | None) -> ReserveResult | None:
        """As `hold_one`: the result, None when a concurrent Reserve of the same transaction
        won; raises PriceChanged (for every hold of the batch: they share the version)."""
        key = (hold.request.account_id, hold.request.route, price_version_id)
        waiting = _Waiting(hold)
        self._waiting.setdefault(key, []).append(waiting)
        if key not in self._running:
            # Its own task: a caller that gives up must not leave the others unanswered.
            self._running[key] = asyncio.create_task(self._drain(key))
        return await waiting.answer

    async def _drain(self, key: _BatchKey) -> None:
        try:
            while queue := self._waiting.pop(key, None):
                for start in range(0, len(queue), self._max_batch):
                    batch = queue[start : start + self._max_batch]
                    try:
                        async with self._pool.connection() as conn:
                            await self._decide(conn, batch, key[2])
                    except Exception as error:  # PriceChanged, or the database failed
                        for waiting in batch:
                            if not waiting.answer.done():
                                waiting.answer.set_exception(error)
        finally:
            del self._running[key]

    async def _decide(
        self, conn: Connection, batch: Sequence[_Waiting], price_version_id: int | None
    ) -> None:
        if len(batch) > 1:
            results = await hold_together(conn, [w.hold for w in batch], price_version_id)
            if results is not None:
                self._metrics.holds_per_statement.observe(len(batch))
                for waiting, result in zip(batch, results, strict=True):
                    _answer(waiting, result)
                return
        for waiting in batch:
            alone = await hold_one(conn, waiting.hold, price_version_id)
            if alone is not None and alone.outcome is ReserveOutcome.HELD:
                self._metrics.holds_per_statement.observe(1)
            _answer(waiting, alone)


def _answer(waiting: _Waiting, result: ReserveResult | None) -> None:
    if not waiting.answer.done():  # (its caller may have given up)
        waiting.answer.set_result(result)
