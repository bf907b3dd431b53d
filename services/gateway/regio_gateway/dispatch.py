"""Hand a request to a worker over NATS and follow its stream of chunks.

The request is published on the (country, route) queue-group subject with its own subject of
the gateway's reply inbox as reply subject. The worker that takes it answers with an ACCEPTED
chunk (sequence 0), then DELTA chunks and a FINAL chunk, in order; a worker that has output
within a few milliseconds skips ACCEPTED and its first DELTA or FINAL chunk is the acceptance
(the request says the gateway takes it so: accepted_by_first_chunk). No subscriber at all is
reported at once by the server (no-responders status); a silent worker by a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from regio.inference.v1 import inference_pb2
from regio_common.errors import ServerError, ServiceUnavailable, UpstreamTimeout
from regio_common.reader_check import (
    answer_nobody_reads,
    answer_reader_check,
    confirm_final,
    is_no_responders,
    is_reader_check,
)
from regio_common.subjects import cancel_subject, infer_subject, worker_infer_subject
from regio_gateway.metrics import GatewayMetrics
from regio_gateway.reply_inbox import Replies, ReplyInbox
from regio_gateway.worker_registry import WorkerRegistry

log = structlog.get_logger()
# Workers asked directly before falling back to the queue groups.
MAX_DIRECT_OFFERS = 4
# Retry-After of a 503: a slot frees within seconds; a missing worker takes longer to start.
BUSY_RETRY_AFTER_SECONDS = 1
NO_WORKER_RETRY_AFTER_SECONDS = 5


class WorkerStream:
    """The chunks of one accepted request, checked for order; cancellable."""

    def __init__(
        self,
        nc: Client,
        replies: Replies,
        accepted: inference_pb2.InferenceChunk,
        first_chunk_timeout: float,
        inter_chunk_timeout: float,
        metrics: GatewayMetrics,
        first_output: tuple[Msg, inference_pb2.InferenceChunk] | None = None,
    ) -> None:
        """`accepted`: the ACCEPTED chunk, or the first output chunk that accepted the request
        (then also `first_output`, with its message, read before anything else)."""
        self._nc = nc
        self._metrics = metrics
        self._replies = replies
        self._first_output = first_output
        self.worker_id = accepted.worker_id
        self.country = accepted.country
        self.transaction_id = accepted.transaction_id
        self._first_timeout = first_chunk_timeout
        self._inter_timeout = inter_chunk_timeout
        self.finished = False
        # Set by the handler of a streamed answer: each delta chunk reaches the client as it is
        # read. A JSON answer reaches it only at the end: until then the client has nothing.
        self.delivers_deltas = False
        self._deltas_delivered = 0

    async def chunks(self) -> AsyncIterator[inference_pb2.InferenceChunk]:
        expected = 1
        timeout = self._first_timeout
        while not self.finished:
            if self._first_output is not None:
                msg, chunk = self._first_output
                self._first_output = None
            else:
                try:
                    msg = await self._replies.next(timeout)
                except TimeoutError:
                    await self.cancel()
                    raise UpstreamTimeout("The model worker stopped responding.") from None
                if is_reader_check(msg):
                    # The worker bills what the client has received, should this gateway vanish.
                    await answer_reader_check(self._nc, msg, self._deltas_delivered)
                    continue
                chunk = inference_pb2.InferenceChunk.FromString(msg.data)
            if chunk.sequence != expected:
                await self.cancel()
                log.error("chunk_out_of_order", expected=expected, got=chunk.sequence)
                raise ServerError("The response stream from the model worker was interrupted.")
            expected += 1
            timeout = self._inter_timeout
            if chunk.kind == inference_pb2.CHUNK_KIND_FINAL:
                self.finished = True
                await confirm_final(self._nc, msg)  # the worker bills an answer confirmed
            yield chunk
            # The consumer asks for the next chunk once it has written this one.
            if chunk.kind == inference_pb2.CHUNK_KIND_DELTA and self.delivers_deltas:
                self._deltas_delivered += 1

    def has_waiting_chunk(self) -> bool:
        """Whether the next message of the stream has already arrived (reading it will not
        wait)."""
        return self._first_output is not None or self._replies.waiting()

    async def cancel(self) -> None:
        """Tell the worker to stop generating (client gone, or the gateway gave up)."""
        if self.finished:
            return
        self.finished = True
        try:
            await self._nc.publish(
                cancel_subject(self.worker_id),
                inference_pb2.CancelRequest(
                    transaction_id=self.transaction_id, delivered_deltas=self._deltas_delivered
                ).SerializeToString(),
            )
        except Exception as error:  # the worker's own deadline stops it if this cannot be sent
            self._metrics.dependency_failed("nats")
            log.warning("cancel_publish_failed", error=str(error))

    async def close(self) -> None:
        if self._first_output is not None:  # a FINAL chunk never read: its worker bills nothing
            msg, _ = self._first_output
            self._first_output = None
            await answer_nobody_reads(self._nc, msg)
        self._replies.close()


class Dispatcher:
    def __init__(
        self,
        nc: Client,
        inbox: ReplyInbox,
        registry: WorkerRegistry,
        accept_timeout: float,
        first_chunk_timeout: float,
        inter_chunk_timeout: float,
        metrics: GatewayMetrics,
    ) -> None:
        self._nc = nc
        self._inbox = inbox
        self._metrics = metrics
        self._registry = registry
        self._accept_timeout = accept_timeout
        self._first_chunk_timeout = first_chunk_timeout
        self._inter_chunk_timeout = inter_chunk_timeout
        self._abandoned: set[asyncio.Task[None]] = set()

    def abandon(self, offer: asyncio.Future[WorkerStream]) -> None:
        """An offer whose stream must not be read (its hold was refused): once a worker has
        accepted it, the generation is cancelled. Runs on its own, beyond the request."""
        task = asyncio.create_task(self._cancel_when_accepted(offer))
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    async def _cancel_when_accepted(self, offer: asyncio.Future[WorkerStream]) -> None:
        try:
            stream = await offer
        except BaseException:  # not accepted: nothing runs, the offer's error is moot
            return
        await stream.cancel()
        await stream.close()

    async def open(
        self, request: inference_pb2.InferenceRequest, countries: list[str]
    ) -> WorkerStream:
        """Give the request to a live worker in one of `countries`, or raise 503.

        The least loaded workers known from heartbeats are asked directly, one after the other;
        a full worker answers REJECTED at once, so the next one is asked without waiting. Then
        each country's queue group is asked, which also reaches workers whose first heartbeat
        has not arrived yet."""
        route = request.route
        request.accepted_by_first_chunk = True  # this gateway reads such streams (see _offer)
        payload = request.SerializeToString()
        workers = self._registry.workers_by_preference(route, countries)
        for worker in workers[:MAX_DIRECT_OFFERS]:
            subject = worker_infer_subject(worker.worker_id)
            stream = await self._offer(payload, subject, worker.country, route)
            if stream is not None:
                self._registry.note_dispatched(worker.worker_id)
                return stream
        for country in self._registry.countries_by_preference(route, countries):
            stream = await self._offer(payload, infer_subject(country, route), country, route)
            if stream is not None:
                return stream
        if workers:
            raise ServiceUnavailable(
                f"Every worker of model '{route}' in region '{request.region}' is busy; "
                "please retry shortly.",
                code="capacity_exhausted",
                retry_after_seconds=BUSY_RETRY_AFTER_SECONDS,
            )
        raise ServiceUnavailable(
            f"No capacity for model '{route}' in region '{request.region}' right now; "
            "please retry shortly.",
            retry_after_seconds=NO_WORKER_RETRY_AFTER_SECONDS,
        )

    async def _offer(
        self, payload: bytes, subject: str, country: str, route: str
    ) -> WorkerStream | None:
        replies = self._inbox.open()
        try:
            await self._nc.publish(subject, payload, reply=replies.subject)
            msg = await replies.next(self._accept_timeout)
        except TimeoutError:
            log.warning("worker_accept_timeout", country=country, route=route)
            replies.close()
            return None
        except asyncio.CancelledError:
            replies.close()
            raise
        except nats.errors.Error:  # connection closed or its buffer full: still a 500
            self._metrics.dependency_failed("nats")
            replies.close()
            raise
        if is_no_responders(msg):
            log.warning("no_responders", country=country, route=route)
            replies.close()
            return None
        chunk = inference_pb2.InferenceChunk.FromString(msg.data)
        if chunk.kind in _OUTPUT_KINDS:  # accepted by its first output (sequence 1)
            first_output: tuple[Msg, inference_pb2.InferenceChunk] | None = (msg, chunk)
        elif chunk.kind == inference_pb2.CHUNK_KIND_ACCEPTED:
            first_output = None
        else:
            log.warning("worker_rejected", country=country, reason=chunk.error_message)
            replies.close()
            return None
        return WorkerStream(
            self._nc,
            replies,
            chunk,
            self._first_chunk_timeout,
            self._inter_chunk_timeout,
            self._metrics,
            first_output,
        )


_OUTPUT_KINDS = (inference_pb2.CHUNK_KIND_DELTA, inference_pb2.CHUNK_KIND_FINAL)
