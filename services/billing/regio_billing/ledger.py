"""The ledger: holds, settlement and payments in PostgreSQL, each operation one transaction.

Lock order, to stay free of deadlocks: a hold row before an account row, an account row before
its lots and its usage windows; several account rows in account_id order. Reserve locks only its
account (the hold it inserts is new), and with limits its usage windows after it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing import lots, promotions, usage_windows
from regio_billing.balances import read_balance
from regio_billing.database import BillingPool
from regio_billing.errors import HoldNotFound, IdempotencyConflict, require
from regio_billing.hold_batching import HoldBatcher
from regio_billing.hold_statements import PriceChanged
from regio_billing.invariants import find_violations
from regio_billing.journal import (
    PAYMENTS_ACCOUNT,
    PROMOTIONS_ACCOUNT,
    customer_ledger_account,
    post_entry,
)
from regio_billing.limited_reserve import HoldRequest, PricedHold, reserve_with_limits
from regio_billing.metrics import BillingMetrics
from regio_billing.price_versions import (
    PriceVersion,
    current_price_version,
    publish_prices,
)
from regio_billing.pricing import Prices
from regio_billing.promotions import Promotion
from regio_billing.refunds import refund_payment
from regio_billing.results import (
    BalanceSnapshot,
    RefundResult,
    ReserveOutcome,
    ReserveResult,
    SettleResult,
)
from regio_billing.settlement import (
    SettledUsage,
    SettleOutcome,
    UsageProblem,
    UsageToSettle,
    settle_batch,
)
from regio_billing.usage_limits import UsageLimits
from regio_common.catalogue import Catalogue

log = structlog.get_logger()

Connection = AsyncConnection[TupleRow]

NO_LIMITS = UsageLimits()
INSUFFICIENT = ReserveOutcome.INSUFFICIENT_FUNDS

# Expired holds released per sweep transaction: keeps each transaction and its locks short.
SWEEP_BATCH = 500


@dataclass(frozen=True)
class _Hold:
    transaction_id: str
    account_id: str
    amount_nano: int
    prices: Prices
    status: str


class Ledger:
    def __init__(
        self, pool: BillingPool, catalogue: Catalogue, metrics: BillingMetrics | None = None
    ) -> None:
        self._pool = pool
        self._catalogue = catalogue
        self._metrics = metrics or BillingMetrics()
        # Each route's price as of its last reserve; every hold re-checks it (hold_statements).
        self._price_versions: dict[str, PriceVersion] = {}
        self._holds = HoldBatcher(pool, self._metrics)
        for problem in UsageProblem:
            self._metrics.usage_rejected.labels(problem.value)  # zero until the first one

    async def publish_catalogue_prices(self) -> list[str]:
        """Append a price version for every catalogue route whose price changed (at start)."""
        return await self.publish_prices(
            {name: Prices.of_route(route) for name, route in self._catalogue.routes.items()}
        )

    async def publish_prices(self, prices: Mapping[str, Prices]) -> list[str]:
        """Append a price version for each route whose latest version differs."""
        async with self._pool.connection() as conn, conn.transaction():
            return await publish_prices(conn, prices)

    async def reserve(
        self,
        *,
        transaction_id: str,
        account_id: str,
        route: str,
        region: str,
        max_prompt_tokens: int,
        max_completion_tokens: int,
        ttl_seconds: int,
        key_id: str = "",
        key_limits: UsageLimits = NO_LIMITS,
        account_limits: UsageLimits = NO_LIMITS,
    ) -> ReserveResult:
        """Hold the worst-case cost of a request, or refuse. Idempotent per transaction id.

        With limits of the key or the account, they are checked and counted in the same
        transaction as the hold (see limited_reserve.py); without any, the reserve takes the
        two-round-trip path below and writes nothing but the hold."""
        require(bool(transaction_id), "transaction_id is required", "transaction_id")
        require(bool(account_id), "account_id is required", "account_id")
        require(ttl_seconds > 0, "ttl_seconds must be positive", "ttl_seconds")
        require(max_prompt_tokens >= 0, "max_prompt_tokens cannot be negative", "max_prompt_tokens")
        require(
            max_completion_tokens >= 0,
            "max_completion_tokens cannot be negative",
            "max_completion_tokens",
        )
        limited = not (key_limits.is_empty() and account_limits.is_empty())
        require(bool(key_id) or key_limits.is_empty(), "key_limits need a key_id", "key_id")
        catalogue_route = self._catalogue.routes.get(route)
        if catalogue_route is None:
            log.info("reserve_unknown_route", route=route)
            return ReserveResult(ReserveOutcome.UNKNOWN_ROUTE, held_nano=0, available_nano=0)

        request = HoldRequest(
            transaction_id=transaction_id,
            account_id=account_id,
            key_id=key_id,
            route=route,
            region=region,
            ttl_seconds=ttl_seconds,
            max_prompt_tokens=max_prompt_tokens,
            max_completion_tokens=max_completion_tokens,
        )
        catalogued = Prices.of_route(catalogue_route)
        hold: PricedHold | None
        result: ReserveResult | None
        if limited:
            async with self._pool.connection() as conn:
                result, hold = await reserve_with_limits(
                    conn, request, catalogued, key_limits, account_limits
                )
        else:
            # One round trip for a new hold while the route's price is unchanged (shared with
            # the account's concurrent holds, see hold_batching.py). A repeated transaction id
            # is noticed by the hold's primary key (or, when the credit is used up, looked up
            # before refusing) and answered with the first hold.
            hold, result = await self._hold_at_current_price(request, catalogued)
        # (The limited path looked for an earlier hold under the account lock already.)
        refused = not limited and result is not None and result.outcome is INSUFFICIENT
        if result is None or refused:
            async with self._pool.connection() as conn:
                existing = await self._existing_hold_result(conn, transaction_id, account_id)
            if existing is not None:
                return existing
            if result is None:
                raise RuntimeError(f"hold {transaction_id} vanished after a conflicting insert")
        if result.limit is not None:
            log.info(
                "reserve_limited",
                account_id=account_id,
                key_id=key_id,
                limit_kind=result.limit.kind.value,
                limit_scope=result.limit.scope.value,
                limit=result.limit.limit,
                used=result.limit.used,
                retry_after_ms=result.limit.retry_after_ms,
            )
        # A granted hold is the common case: its transaction's other lines tell of it.
        decided = log.debug if result.outcome is ReserveOutcome.HELD else log.info
        decided(
            "reserve_decided",
            account_id=account_id,
            outcome=result.outcome.value,
            hold_nano=hold.amount_nano if hold is not None else result.held_nano,
            available_nano=result.available_nano,
        )
        return result

    async def _hold_at_current_price(
        self, request: HoldRequest, catalogued: Prices
    ) -> tuple[PricedHold, ReserveResult | None]:
        """Hold at the route's current price, known from the last reserve of the route: the
        hold statement itself checks that it is still the latest version. Only a price change
        (or the first reserve of a route) costs a round trip more, to read the new version."""
        version = self._price_versions.get(request.route)
        while True:
            if version is None:
                async with self._pool.connection() as conn:
                    version = await current_price_version(conn, request.route, catalogued)
                self._price_versions[request.route] = version
            hold = PricedHold(request, version.prices)
            try:
                return hold, await self._holds.hold(hold, version.version_id)
            except PriceChanged:
                version = None

    async def _existing_hold_result(
        self, conn: Connection, transaction_id: str, account_id: str
    ) -> ReserveResult | None:
        hold = await _find_hold(conn, transaction_id)
        if hold is None:
            return None
        if hold.account_id != account_id:
            raise IdempotencyConflict(
                "transaction_id was already used by another account", param="transaction_id"
            )
        available = (await _balance(conn, account_id)).available_nano
        log.info("reserve_repeated", hold_nano=hold.amount_nano, status=hold.status)
        return ReserveResult(ReserveOutcome.HELD, hold.amount_nano, available)

    async def release(self, transaction_id: str, reason: str) -> bool:
        """Give an open hold back; False when it is already settled, released or unknown."""
        require(bool(transaction_id), "transaction_id is required", "transaction_id")
        async with self._pool.connection() as conn, conn.transaction():
            released = await _close_hold(conn, transaction_id, "released", reason)
            if released is None:
                log.info("release_ignored", reason=reason)
                return False
            account_id, amount = released
            await conn.execute(
                "UPDATE billing.accounts SET held_nano = held_nano - %s WHERE account_id = %s",
                (amount, account_id),
            )
        log.info("hold_released", account_id=account_id, hold_nano=amount, reason=reason)
        return True

    async def settle(
        self, transaction_id: str, prompt_tokens: int, completion_tokens: int, billable: bool
    ) -> SettleResult:
        """Charge the reported tokens against the hold and release the rest.

        Idempotent per transaction id: a repeat answers the first result. Raises HoldNotFound
        when no hold exists (nothing was reserved, so nothing may be charged)."""
        require(bool(transaction_id), "transaction_id is required", "transaction_id")
        require(prompt_tokens >= 0, "prompt_tokens cannot be negative", "prompt_tokens")
        require(completion_tokens >= 0, "completion_tokens cannot be negative", "completion_tokens")
        usage = UsageToSettle(transaction_id, prompt_tokens, completion_tokens, billable)
        (result,) = await self.settle_batch([usage])
        if result.outcome is SettleOutcome.NO_HOLD:
            raise HoldNotFound(f"no hold for transaction {transaction_id}")
        if result.outcome is SettleOutcome.DUPLICATE:
            log.info("settle_repeated", charged_nano=result.charged_nano)
        else:  # (the usage stream's batches log one line per pull instead)
            log.info(
                "settled",
                transaction_id=transaction_id,
                charged_nano=result.charged_nano,
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                billable=billable,
            )
        return SettleResult(
            charged_nano=result.charged_nano,
            already_settled=result.outcome is SettleOutcome.DUPLICATE,
        )

    async def settle_batch(self, usages: Sequence[UsageToSettle]) -> list[SettledUsage]:
        """Settle many usage records in one transaction (see settlement.py); one result per
        record, in order. A record without a hold is answered NO_HOLD, never charged."""
        # Pipelined: statements that need no answer in between travel together.
        async with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
            results = await settle_batch(conn, usages)
        for result in results:  # counted once committed (a failed batch is retried)
            if result.problem is not None:
                self._metrics.usage_rejected.labels(result.problem.value).inc()
        return results

    async def prune_usage_windows(self) -> int:
        """Delete usage windows no limit reads any more (see usage_windows.py)."""
        async with self._pool.connection() as conn:
            return await usage_windows.prune(conn)

    async def add_credits(
        self, account_id: str, amount_nano: int, idempotency_key: str, reference: str
    ) -> BalanceSnapshot:
        """Record a payment; a repeated idempotency key returns the balance without crediting."""
        require(bool(account_id), "account_id is required", "account_id")
        require(amount_nano > 0, "amount_nano must be positive", "amount_nano")
        require(bool(idempotency_key), "idempotency_key is required", "idempotency_key")
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO billing.accounts (account_id) VALUES (%s)"
                " ON CONFLICT (account_id) DO NOTHING",
                (account_id,),
            )
            journal_id = await post_entry(
                conn,
                kind="payment",
                reference_key=idempotency_key,
                memo=reference,
                postings=[
                    (PAYMENTS_ACCOUNT, -amount_nano),
                    (customer_ledger_account(account_id), amount_nano),
                ],
            )
            if journal_id is None:
                await _check_same_payment(conn, idempotency_key, account_id, amount_nano)
                log.info("payment_repeated", account_id=account_id)
                return await _balance(conn, account_id)
            cursor = await conn.execute(
                "INSERT INTO billing.payments"
                " (idempotency_key, account_id, amount_nano, reference, journal_id)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (idempotency_key, account_id, amount_nano, reference, journal_id),
            )
            payment_row = await cursor.fetchone()
            assert payment_row is not None
            payment_id: int = payment_row[0]
            await lots.open_lot(
                conn,
                account_id=account_id,
                kind="paid",
                payment_id=payment_id,
                journal_id=journal_id,
                amount_nano=amount_nano,
            )
            bonus = await _grant_bonus(conn, account_id, payment_id, idempotency_key, amount_nano)
            await conn.execute(
                "UPDATE billing.accounts SET balance_nano = balance_nano + %s"
                " WHERE account_id = %s",
                (amount_nano + bonus, account_id),
            )
            balance = await _balance(conn, account_id)
        log.info(
            "payment_recorded", account_id=account_id, amount_nano=amount_nano, bonus_nano=bonus
        )
        return balance

    async def refund_payment(self, idempotency_key: str) -> RefundResult:
        """Return the unused paid part of a payment and claw back its unused bonus, never more
        than is available. Idempotent: a repeat answers the first refund."""
        require(bool(idempotency_key), "idempotency_key is required", "idempotency_key")
        async with self._pool.connection() as conn, conn.transaction():
            result = await refund_payment(conn, idempotency_key)
        log.info(
            "payment_refunded",
            account_id=result.account_id,
            refunded_nano=result.refunded_nano,
            clawed_back_nano=result.clawed_back_nano,
            already_refunded=result.already_refunded,
        )
        return result

    async def create_promotion(
        self,
        *,
        name: str,
        min_payment_nano: int,
        bonus_percent: int,
        starts_at: datetime,
        ends_at: datetime,
    ) -> Promotion:
        async with self._pool.connection() as conn:
            promotion = await promotions.create_promotion(
                conn,
                name=name,
                min_payment_nano=min_payment_nano,
                bonus_percent=bonus_percent,
                starts_at=starts_at,
                ends_at=ends_at,
            )
        log.info("promotion_created", promotion=promotion.name, promotion_id=promotion.id)
        return promotion

    async def list_promotions(self) -> list[Promotion]:
        async with self._pool.connection() as conn:
            return await promotions.list_promotions(conn)

    async def get_balance(self, account_id: str) -> BalanceSnapshot:
        """Balance, held and available; zeros for an account billing has never seen."""
        require(bool(account_id), "account_id is required", "account_id")
        async with self._pool.connection() as conn:
            return await _balance(conn, account_id)

    async def sweep_expired_holds(self) -> int:
        """Release every open hold past its expiry; returns how many were released."""
        total = 0
        while True:
            released = await self._sweep_batch()
            total += released
            if released < SWEEP_BATCH:
                return total

    async def _sweep_batch(self) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            # SKIP LOCKED: a hold being settled right now is left to its settlement, and
            # several billing replicas can sweep side by side.
            cursor = await conn.execute(
                "SELECT transaction_id, account_id, amount_nano FROM billing.holds"
                " WHERE status = 'open' AND expires_at < now()"
                " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (SWEEP_BATCH,),
            )
            expired = await cursor.fetchall()
            if not expired:
                return 0
            held_back: dict[str, int] = {}
            for _, account_id, amount in expired:
                held_back[account_id] = held_back.get(account_id, 0) + amount
            await conn.execute(
                "SELECT 1 FROM billing.accounts WHERE account_id = ANY(%s)"
                " ORDER BY account_id FOR NO KEY UPDATE",  # as settlement.py, same reason
                (sorted(held_back),),
            )
            await conn.execute(
                "UPDATE billing.holds SET status = 'released', closed_at = now(),"
                " release_reason = 'expired' WHERE transaction_id = ANY(%s)",
                ([transaction_id for transaction_id, _, _ in expired],),
            )
            await conn.execute(
                "UPDATE billing.accounts AS a SET held_nano = a.held_nano - v.amount"
                " FROM unnest(%s::text[], %s::bigint[]) AS v(account_id, amount)"
                " WHERE a.account_id = v.account_id",
                (list(held_back), list(held_back.values())),
            )
        for transaction_id, account_id, amount in expired:
            log.info(
                "hold_expired",
                transaction_id=transaction_id,
                account_id=account_id,
                hold_nano=amount,
            )
        return len(expired)

    async def check_invariants(self) -> list[str]:
        """Human-readable violations of the ledger's invariants; [] when all hold."""
        async with self._pool.connection() as conn:
            return await find_violations(conn)


async def _find_hold(
    conn: Connection, transaction_id: str, for_update: bool = False
) -> _Hold | None:
    query = (
        "SELECT transaction_id, account_id, amount_nano, input_price_nano, output_price_nano,"
        " status FROM billing.holds WHERE transaction_id = %s"
    )
    cursor = await conn.execute(query + (" FOR UPDATE" if for_update else ""), (transaction_id,))
    row = await cursor.fetchone()
    if row is None:
        return None
    return _Hold(
        transaction_id=row[0],
        account_id=row[1],
        amount_nano=row[2],
        prices=Prices(input_price_nano=row[3], output_price_nano=row[4]),
        status=row[5],
    )


async def _close_hold(
    conn: Connection, transaction_id: str, status: str, reason: str | None
) -> tuple[str, int] | None:
    """Move an open hold to `status`; returns (account_id, amount) or None if not open."""
    cursor = await conn.execute(
        "UPDATE billing.holds SET status = %s, closed_at = now(), release_reason = %s"
        " WHERE transaction_id = %s AND status = 'open' RETURNING account_id, amount_nano",
        (status, reason, transaction_id),
    )
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1])


async def _grant_bonus(
    conn: Connection, account_id: str, payment_id: int, payment_key: str, amount_nano: int
) -> int:
    """Open the promotional lot a new payment earns; returns the bonus (0 when none).
    The entry's reference key is the payment's key: one bonus per payment, even replayed."""
    promotion = await promotions.promotion_for_payment(conn, amount_nano)
    if promotion is None:
        return 0
    bonus = promotions.bonus_nano(amount_nano, promotion.bonus_percent)
    if bonus == 0:
        return 0
    journal_id = await post_entry(
        conn,
        kind="promotion",
        reference_key=payment_key,
        memo=promotion.name,
        postings=[(PROMOTIONS_ACCOUNT, -bonus), (customer_ledger_account(account_id), bonus)],
    )
    if journal_id is None:
        raise RuntimeError(f"payment {payment_key} already earned a bonus")
    await lots.open_lot(
        conn,
        account_id=account_id,
        kind="promotional",
        payment_id=payment_id,
        journal_id=journal_id,
        amount_nano=bonus,
        promotion_id=promotion.id,
    )
    log.info("promotion_granted", promotion=promotion.name, bonus_nano=bonus)
    return bonus


async def _check_same_payment(
    conn: Connection, idempotency_key: str, account_id: str, amount_nano: int
) -> None:
    cursor = await conn.execute(
        "SELECT account_id, amount_nano FROM billing.payments WHERE idempotency_key = %s",
        (idempotency_key,),
    )
    row = await cursor.fetchone()
    if row is None or (row[0], row[1]) != (account_id, amount_nano):
        raise IdempotencyConflict(
            "idempotency_key was already used for a different payment", param="idempotency_key"
        )


async def _balance(conn: Connection, account_id: str) -> BalanceSnapshot:
    return await read_balance(conn, account_id)
