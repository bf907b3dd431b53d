"""Settles holds from the usage records that workers publish to JetStream.

At-least-once delivery meets an idempotent settle: a record is acked only after its settlement
committed, so a crash redelivers it, and the settlement's unique key absorbs the repeat."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from regio_billing.records import MalformedUsageRecord, parse_usage_record
from regio_billing.results import SettleResult
from regio_common.errors import ClientError
from regio_common.subjects import BILLING_USAGE_CONSUMER, USAGE_STREAM, USAGE_WILDCARD
from regio_common.usage_stream import ensure_usage_stream

log = structlog.get_logger()

SettleFunction = Callable[[str, int, int, bool], Awaitable[SettleResult]]

# A record not acked within this time is redelivered (a settle takes milliseconds).
ACK_WAIT_SECONDS = 30.0
# Redelivery delay after a database error, so an outage is not hammered.
RETRY_DELAY_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 10.0


def consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=BILLING_USAGE_CONSUMER,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        max_deliver=-1,  # never drop a record: an unsettled hold would expire uncharged
        filter_subject=USAGE_WILDCARD,
    )


class UsageConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        settle: SettleFunction,
        batch: int,
        fetch_wait_seconds: float,
        retry_delay_seconds: float = RETRY_DELAY_SECONDS,
    ) -> None:
        self._js = js
        self._settle = settle
        self._batch = batch
        self._fetch_wait = fetch_wait_seconds
        self._retry_delay = retry_delay_seconds
        self._subscription: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await ensure_usage_stream(self._js)
        self._subscription = await self._js.pull_subscribe(
            USAGE_WILDCARD,
            durable=BILLING_USAGE_CONSUMER,
            stream=USAGE_STREAM,
            config=consumer_config(),
        )
        self._task = asyncio.create_task(self._run(), name="usage-consumer")

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
        while not self._stopping:
            try:
                messages = await self._subscription.fetch(self._batch, timeout=self._fetch_wait)
            except TimeoutError:  # nats.errors.TimeoutError or asyncio's: no record this time
                continue
            except Exception as error:  # NATS reconnecting: wait and pull again
                log.warning("usage_fetch_failed", error=repr(error))
                await asyncio.sleep(self._retry_delay)
                continue
            # Records of different transactions are independent: settle them side by side.
            await asyncio.gather(*(self._handle_safely(message) for message in messages))

    async def _handle_safely(self, message: Any) -> None:
        try:
            await self.handle(message)
        except Exception:  # e.g. the ack could not be sent: the record is simply redelivered
            log.exception("usage_record_handling_failed")

    async def handle(self, message: Any) -> None:
        """Settle one record, then ack it; nak it for a retry when settling failed transiently."""
        try:
            record = parse_usage_record(message.data)
        except MalformedUsageRecord as error:
            log.error("usage_record_malformed", subject=message.subject, error=str(error))
            await message.ack()  # retrying can never succeed
            return
        with structlog.contextvars.bound_contextvars(transaction_id=record.transaction_id):
            try:
                result = await self._settle(
                    record.transaction_id,
                    record.prompt_tokens,
                    record.completion_tokens,
                    record.billable,
                )
            except ClientError as error:
                # No hold (or an invalid record): a poison record must not loop forever.
                log.error(
                    "usage_record_unsettleable",
                    error=error.message,
                    account_id=record.account_id,
                    route=record.route,
                )
                await message.ack()
                return
            except psycopg.Error as error:
                log.warning("usage_settle_deferred", error=str(error), retry_in=self._retry_delay)
                await message.nak(delay=self._retry_delay)
                return
            except Exception:
                log.exception("usage_settle_failed", retry_in=self._retry_delay)
                await message.nak(delay=self._retry_delay)
                return
            await message.ack()
            log.info(
                "usage_record_settled",
                account_id=record.account_id,
                charged_nano=result.charged_nano,
                already_settled=result.already_settled,
            )
