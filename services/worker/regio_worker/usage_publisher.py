"""Usage records to JetStream, for billing. A record is retried with backoff until the stream
acknowledges it: a lost record would leave the account's credit hold unsettled. The
Nats-Msg-Id header (the transaction id) makes retries of a record that did arrive harmless."""

from __future__ import annotations

import asyncio
import itertools

import structlog
from google.protobuf.json_format import MessageToDict
from nats.js import JetStreamContext

from regio.inference.v1 import inference_pb2
from regio_common.subjects import usage_subject

log = structlog.get_logger()

MSG_ID_HEADER = "Nats-Msg-Id"


class UsagePublisher:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        ack_timeout_seconds: float = 5.0,
        first_retry_seconds: float = 0.5,
        max_retry_seconds: float = 30.0,
    ) -> None:
        self._js = js
        self._ack_timeout = ack_timeout_seconds
        self._first_retry = first_retry_seconds
        self._max_retry = max_retry_seconds
        self._pending: dict[asyncio.Task[None], inference_pb2.UsageRecord] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, record: inference_pb2.UsageRecord) -> None:
        """Publish in the background, retrying until acknowledged."""
        task = asyncio.create_task(self._publish_until_acknowledged(record))
        self._pending[task] = record
        task.add_done_callback(lambda done: self._pending.pop(done, None))

    async def _publish_until_acknowledged(self, record: inference_pb2.UsageRecord) -> None:
        delay = self._first_retry
        for attempt in itertools.count(1):
            try:
                ack = await self._js.publish(
                    usage_subject(record.route),
                    record.SerializeToString(),
                    timeout=self._ack_timeout,
                    headers={MSG_ID_HEADER: record.transaction_id},
                )
            except Exception as error:  # timeout, no stream, disconnected...: retry
                log.warning(
                    "usage_publish_failed",
                    transaction_id=record.transaction_id,
                    attempt=attempt,
                    retry_in_seconds=delay,
                    error=repr(error),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry)
                continue
            log.debug(
                "usage_published",
                transaction_id=record.transaction_id,
                stream_sequence=ack.seq,
                duplicate=bool(ack.duplicate),
                attempt=attempt,
            )
            return

    async def wait_for_pending(self, timeout_seconds: float) -> None:
        """Wait for the records still being published. Any left after the timeout are logged
        in full, as errors, so that they can be replayed: never dropped silently."""
        if not self._pending:
            return
        unsent = dict(self._pending)
        _, unfinished = await asyncio.wait(unsent, timeout=timeout_seconds)
        for task in unfinished:
            task.cancel()
            record = MessageToDict(unsent[task], preserving_proto_field_name=True)
            log.error("usage_record_unsent", record=record)
