"""Settles holds from the usage records that workers publish to JetStream.

At-least-once delivery meets an idempotent settle: a record is acked only after its settlement
committed, so a crash redelivers it, and the settlement's unique key absorbs the repeat.

A message holds one record, or several (a UsageBatch: records that finished while the worker's
previous publish was in flight); it is acked once all its records are settled.

Throughput: the records of each pull of up to `batch` messages are settled in ONE database
transaction (one commit, one fsync) when a batch settle function is given, then every message
is acked. A record that cannot be settled must not hold the others back: malformed messages
and records without a hold are acked and counted as rejected, and a pull whose transaction
fails for any reason other than an unreachable database is retried record by record (each
validated like in a batch), so that only the message of the bad record is redelivered (its
other records are then found settled). Records that contradict their hold (another account or
route, see settlement.py) are acked and counted as rejected, never charged."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from regio.inference.v1 import inference_pb2
from regio_billing.metrics import BillingMetrics
from regio_billing.records import MalformedUsageRecord, parse_usage_message
from regio_billing.results import SettleResult
from regio_billing.settlement import SettledUsage, SettleOutcome, UsageToSettle
from regio_common.errors import ClientError
from regio_common.subjects import BILLING_USAGE_CONSUMER, USAGE_STREAM, USAGE_WILDCARD
from regio_common.usage_stream import ensure_usage_stream

log = structlog.get_logger()

SettleFunction = Callable[[str, int, int, bool], Awaitable[SettleResult]]
SettleBatchFunction = Callable[[Sequence[UsageToSettle]], Awaitable[list[SettledUsage]]]

# A record not acked within this time is redelivered (a settle takes milliseconds).
ACK_WAIT_SECONDS = 30.0
# Redelivery delay after a database error, so an outage is not hammered.
RETRY_DELAY_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 10.0
# Pulls being settled at once: the next batch is fetched and written while the previous one
# waits for its commit (its fsync) and its acks. Two keep the database busy without letting
# batches of the same accounts queue up on each other's row locks.
BATCHES_IN_FLIGHT = 2
# Records delivered and not yet acked, at most (set when the durable consumer is created).
MAX_ACK_PENDING = 4096
SETTLED = SettleOutcome.SETTLED
# How long the pull after a linger waits when nothing came meanwhile.
LINGER_FETCH_SECONDS = 0.01
# The `outcome` label of the settlements counter for each settle outcome.
OUTCOME_LABELS = {
    SettleOutcome.SETTLED: "settled",
    SettleOutcome.DUPLICATE: "duplicate",
    SettleOutcome.NO_HOLD: "rejected",
    SettleOutcome.REFUSED: "rejected",
}
UNBILLED_WITHOUT_HOLD = "unbilled"


def consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=BILLING_USAGE_CONSUMER,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        max_deliver=-1,  # never drop a record: an unsettled hold would expire uncharged
        filter_subject=USAGE_WILDCARD,
        # Room for BATCHES_IN_FLIGHT pulls of a large batch (the server's default is 1,000).
        max_ack_pending=MAX_ACK_PENDING,
    )


class UsageConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        settle: SettleFunction,
        batch: int,
        fetch_wait_seconds: float,
        retry_delay_seconds: float = RETRY_DELAY_SECONDS,
        *,
        settle_batch: SettleBatchFunction | None = None,
        metrics: BillingMetrics | None = None,
        stream_replicas: int = 1,
        linger_seconds: float = 0.0,
    ) -> None:
        """`settle` settles one record (the fallback, and the only path without
        `settle_batch`); `settle_batch` settles a whole pull in one transaction."""
        self._js = js
        self._settle = settle
        self._settle_batch = settle_batch
        self._batch = batch
        self._fetch_wait = fetch_wait_seconds
        self._linger = linger_seconds
        self._retry_delay = retry_delay_seconds
        self._metrics = metrics
        # Used when billing starts before any worker and creates the stream itself.
        self._stream_replicas = stream_replicas
        self._subscription: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._in_flight_limit = 1

    async def start(self) -> None:
        await ensure_usage_stream(self._js, self._stream_replicas)
        self._subscription = await self._js.pull_subscribe(
            USAGE_WILDCARD,
            durable=BILLING_USAGE_CONSUMER,
            stream=USAGE_STREAM,
            config=consumer_config(),
        )
        self._in_flight_limit = await self._batches_in_flight()
        self._task = asyncio.create_task(self._run(), name="usage-consumer")

    async def _batches_in_flight(self) -> int:
        """As many pulls at once as the consumer's max_ack_pending allows: beyond it, JetStream
        delivers nothing more until acks come, and a pull would wait out its whole timeout."""
        info = await self._subscription.consumer_info()
        limit: int | None = info.config.max_ack_pending
        if limit is None or limit <= 0:  # unlimited
            return BATCHES_IN_FLIGHT
        return max(1, min(BATCHES_IN_FLIGHT, limit // self._batch))

    async def stop(self) -> None:
        """Finish the current pull and its batch, then unsubscribe.

        Not cancelled mid-pull: the server-side pull request expires together with the client's
        wait, so stopping between pulls leaves no orphaned request that could take a record
        to a subscriber that is gone (it would only come back after the ack wait)."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("usage_consumer_stop_timeout")  # wait_for cancelled the task
            self._task = None
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception as error:  # the connection may already be gone
                log.warning("usage_consumer_unsubscribe_failed", error=str(error))
            self._subscription = None

    async def _run(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                if len(in_flight) >= self._in_flight_limit:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    messages = await self._subscription.fetch(self._batch, timeout=self._fetch_wait)
                except TimeoutError:  # nats.errors.TimeoutError or asyncio's: no record now
                    continue
                except Exception as error:  # NATS reconnecting: wait and pull again
                    log.warning("usage_fetch_failed", error=repr(error))
                    self._count_nats_error()
                    await asyncio.sleep(self._retry_delay)
                    continue
                if len(messages) < self._batch and self._linger > 0:
                    messages = [*messages, *await self._more(self._batch - len(messages))]
                task = asyncio.create_task(self._handle_batch_safely(messages))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            if in_flight:  # a stop lets the batches in progress commit and ack
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _more(self, room: int) -> list[Any]:
        """After a short pull: the records that came within the linger (none on any error:
        the pull at hand is settled as it is)."""
        await asyncio.sleep(self._linger)
        try:
            more: list[Any] = await self._subscription.fetch(room, timeout=LINGER_FETCH_SECONDS)
        except Exception:  # TimeoutError when nothing came; NATS trouble is met by the next pull
            return []
        return more

    async def _handle_batch_safely(self, messages: Sequence[Any]) -> None:
        try:
            await self.handle_batch(messages)
        except Exception:  # never let one pull end the consumer; unacked records return
            log.exception("usage_batch_handling_failed")

    async def handle_batch(self, messages: Sequence[Any]) -> None:
        """Settle a pull's records (one transaction when a batch settle is given), then ack."""
        if self._settle_batch is None:
            # Records of different transactions are independent: settle them side by side.
            await asyncio.gather(*(self._handle_safely(message) for message in messages))
            return
        parsed = [
            (message, record)
            for message in messages
            for record in await self._parse_or_reject(message)
        ]
        if not parsed:
            return
        delivered = list({id(message): message for message, _ in parsed}.values())
        usages = [_usage(record) for _, record in parsed]
        try:
            results = await self._settle_batch(usages)
        except psycopg.OperationalError as error:
            # The database is unreachable: every record would fail alike, so retry them later.
            self._count_database_error()
            log.warning("usage_batch_deferred", error=str(error), records=len(parsed))
            for message in delivered:
                await self._nak(message)
            return
        except Exception as error:
            # Possibly one bad record: settle one by one, so that only it is redelivered.
            if isinstance(error, psycopg.Error):
                self._count_database_error()
            log.exception("usage_batch_failed_settling_one_by_one", records=len(parsed))
            await self._settle_each(parsed)
            return
        outcomes = self._record_outcomes([record for _, record in parsed], results, time.time())
        for message in delivered:  # an ack only queues a publish: no task per message needed
            await self._ack(message)
        # One line per pull (the per-record lines are at debug level: see settlement.py); it
        # names every record's transaction, so a request's life can still be followed in logs.
        log.info(
            "usage_batch_settled",
            records=len(parsed),
            transaction_ids=[record.transaction_id for _, record in parsed],
            settled=outcomes[SETTLED],
            duplicates=outcomes[SettleOutcome.DUPLICATE],
            without_hold=outcomes[SettleOutcome.NO_HOLD],
            refused=outcomes[SettleOutcome.REFUSED],
            charged_nano=sum(r.charged_nano for r in results if r.outcome is SETTLED),
        )

    async def _handle_safely(self, message: Any) -> None:
        try:
            await self.handle(message)
        except Exception:  # e.g. the ack could not be sent: the record is simply redelivered
            log.exception("usage_record_handling_failed")

    async def handle(self, message: Any) -> None:
        """Settle a message's records, then ack it; nak it for a retry when settling one of them
        failed transiently."""
        await self._settle_each(
            [(message, record) for record in await self._parse_or_reject(message)]
        )

    async def _settle_each(self, parsed: Sequence[tuple[Any, inference_pb2.UsageRecord]]) -> None:
        """Settle records one by one, side by side (those of different transactions are
        independent); ack each message whose records are all done, nak the others."""
        done = await asyncio.gather(*(self._settle_one(record) for _, record in parsed))
        all_done: dict[int, tuple[Any, bool]] = {}
        for (message, _), record_done in zip(parsed, done, strict=True):
            _, message_done = all_done.get(id(message), (message, True))
            all_done[id(message)] = (message, message_done and record_done)
        for message, message_done in all_done.values():
            await (self._ack(message) if message_done else self._nak(message))

    async def _settle_one(self, record: inference_pb2.UsageRecord) -> bool:
        """Settle one record: True when it is done with (settled, or never settleable), False
        when it must come again."""
        with structlog.contextvars.bound_contextvars(transaction_id=record.transaction_id):
            try:
                outcome, charged_nano = await self._settle_record(record)
            except ClientError as error:
                # No hold (or an invalid record): a poison record must not loop forever.
                log.error(
                    "usage_record_unsettleable",
                    error=error.message,
                    account_id=record.account_id,
                    route=record.route,
                )
                self._count("rejected")
                return True
            except psycopg.Error as error:
                self._count_database_error()
                log.warning("usage_settle_deferred", error=str(error), retry_in=self._retry_delay)
                return False
            except Exception:
                log.exception("usage_settle_failed", retry_in=self._retry_delay)
                return False
            self._record_outcome(record, outcome, time.time())
            log.info(
                "usage_record_settled",
                account_id=record.account_id,
                charged_nano=charged_nano,
                outcome=outcome.value,
            )
            return True

    async def _settle_record(self, record: inference_pb2.UsageRecord) -> tuple[SettleOutcome, int]:
        """Settle one record: as a batch of one when batches are settled (so that it is
        validated against its hold like any other record), else through `settle`."""
        if self._settle_batch is not None:
            (result,) = await self._settle_batch([_usage(record)])
            return result.outcome, result.charged_nano
        settled = await self._settle(
            record.transaction_id, record.prompt_tokens, record.completion_tokens, record.billable
        )
        outcome = SettleOutcome.DUPLICATE if settled.already_settled else SettleOutcome.SETTLED
        return outcome, settled.charged_nano

    async def _parse_or_reject(self, message: Any) -> list[inference_pb2.UsageRecord]:
        """The message's records, or none after acking a payload that can never be settled."""
        try:
            return parse_usage_message(message.data, message.headers)
        except MalformedUsageRecord as error:
            log.error("usage_record_malformed", subject=message.subject, error=str(error))
            self._count("rejected")
            await message.ack()  # retrying can never succeed
            return []

    def _record_outcomes(
        self,
        records: Sequence[inference_pb2.UsageRecord],
        results: Sequence[SettledUsage],
        committed_unix: float,
    ) -> Counter[SettleOutcome]:
        """`_record_outcome` for a committed batch, with each counter bumped once per batch
        rather than once per record; answers how many records had each outcome."""
        outcomes = Counter(result.outcome for result in results)
        labels = Counter(
            _outcome_label(record, result.outcome)
            for record, result in zip(records, results, strict=True)
        )
        for label, count in labels.items():
            self._count(label, count)
        for record, result in zip(records, results, strict=True):
            if result.outcome is SETTLED:
                self._observe_lag(record, committed_unix)
            elif result.outcome is SettleOutcome.NO_HOLD:
                _log_no_hold(record)
        return outcomes

    def _record_outcome(
        self, record: inference_pb2.UsageRecord, outcome: SettleOutcome, committed_unix: float
    ) -> None:
        """Count one record's outcome. A record without a hold is logged here (one that
        contradicts its hold was logged as usage_refused by settlement); both are acked and
        never charged: they cannot loop, and a refused record's hold expires."""
        self._count(_outcome_label(record, outcome))
        if outcome is SETTLED:
            self._observe_lag(record, committed_unix)
        elif outcome is SettleOutcome.NO_HOLD:
            _log_no_hold(record)

    def _observe_lag(self, record: inference_pb2.UsageRecord, committed_unix: float) -> None:
        if self._metrics is not None and record.finished_unix_ms > 0:
            lag = max(0.0, committed_unix - record.finished_unix_ms / 1000)
            self._metrics.settlement_lag_seconds.observe(lag)

    async def _ack(self, message: Any) -> None:
        try:
            await message.ack()
        except Exception as error:  # the record comes back after the ack wait; settle is idempotent
            self._count_nats_error()
            log.warning("usage_ack_failed", error=repr(error))

    async def _nak(self, message: Any) -> None:
        try:
            await message.nak(delay=self._retry_delay)
        except Exception as error:  # unacked, it comes back after the ack wait anyway
            self._count_nats_error()
            log.warning("usage_nak_failed", error=repr(error))

    def _count(self, outcome: str, records: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.settlements.labels(outcome=outcome).inc(records)

    def _count_database_error(self) -> None:
        if self._metrics is not None:
            self._metrics.database_errors.inc()

    def _count_nats_error(self) -> None:
        if self._metrics is not None:
            self._metrics.nats_errors.inc()


def _outcome_label(record: inference_pb2.UsageRecord, outcome: SettleOutcome) -> str:
    """The settlements counter's `outcome`; a record with nothing to charge and no hold (an
    offer cancelled because its hold was refused) is `unbilled`, not `rejected`."""
    if outcome is SettleOutcome.NO_HOLD and not record.billable:
        return UNBILLED_WITHOUT_HOLD
    return OUTCOME_LABELS[outcome]


def _log_no_hold(record: inference_pb2.UsageRecord) -> None:
    if not record.billable:
        # Expected: the gateway offers a request to a worker while billing decides its hold,
        # and cancels it unread when the hold is refused (nothing delivered, nothing to charge).
        log.info(
            "unbilled_usage_without_hold",
            transaction_id=record.transaction_id,
            account_id=record.account_id,
            unbilled_reason=record.unbilled_reason,
        )
        return
    log.error(
        "usage_record_unsettleable",
        error="no hold for this transaction",
        transaction_id=record.transaction_id,
        account_id=record.account_id,
        route=record.route,
    )


def _usage(record: inference_pb2.UsageRecord) -> UsageToSettle:
    return UsageToSettle(
        transaction_id=record.transaction_id,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        billable=record.billable,
        account_id=record.account_id,
        route=record.route,
    )
