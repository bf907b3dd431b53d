"""The worker's NATS side: take requests from the (country, route) queue group, answer each with
ACCEPTED or REJECTED, stream DELTA chunks and one FINAL chunk, honour cancel requests, publish
usage records and heartbeats, and drain gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from regio.inference.v1 import inference_pb2
from regio_common.errors import GENERATION_FAILED
from regio_common.subjects import (
    cancel_subject,
    infer_subject,
    worker_infer_subject,
    worker_queue_group,
)
from regio_common.usage_stream import ensure_usage_stream
from regio_worker.engine.base import (
    ContextCompressed,
    Engine,
    FinishReason,
    GenerationFinished,
    OutputFormat,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from regio_worker.engine.json_output import checked_json_output
from regio_worker.heartbeat import HeartbeatPublisher, LoadReport
from regio_worker.job_queue import Job, JobQueue
from regio_worker.metrics import WorkerMetrics
from regio_worker.protocol import (
    WorkerIdentity,
    accepted_chunk,
    delta_chunk,
    final_chunk,
    generation_request,
    rejected_chunk,
    usage_record,
)
from regio_worker.reader_check import ReaderCheck
from regio_worker.text_gathering import TextGathering
from regio_worker.usage_publisher import LINGER_SECONDS, UsagePublisher

log = structlog.get_logger()

USAGE_FLUSH_TIMEOUT_SECONDS = 30.0
# A usage record's unbilled_reason when the gateway died before its client received a token.
READER_GONE = "reader_gone"


@dataclass(frozen=True)
class ReaderCheckTiming:
    """How often a streaming worker checks that its gateway still reads (reader_check.py)."""

    interval_seconds: float = 1.0
    timeout_seconds: float = 5.0


# A request whose gateway takes the first chunk as acceptance (accepted_by_first_chunk) and
# that starts at once gets its ACCEPTED chunk only if it has no output within this time: an
# answer faster than that (a fast upstream, a short answer) is one NATS message shorter. Far
# below the gateway's accept timeout (REGIO_GATEWAY_ACCEPT_TIMEOUT_SECONDS, 3 s).
ACCEPTED_DELAY_SECONDS = 0.02


def _now_ms() -> int:
    return int(time.time() * 1000)


class WorkerServer:
    def __init__(
        self,
        nc: Client,
        engine: Engine,
        identity: WorkerIdentity,
        *,
        queue_limit: int,
        heartbeat_interval_ms: int,
        metrics: WorkerMetrics | None = None,
        stream_replicas: int = 1,
        reader_check: ReaderCheckTiming | None = None,
        usage_linger_seconds: float = LINGER_SECONDS,
    ) -> None:
        self._nc = nc
        self._reader_check = reader_check or ReaderCheckTiming()
        self._stream_replicas = stream_replicas
        self._engine = engine
        self.identity = identity
        self.metrics = metrics or WorkerMetrics(identity.route)
        self._jobs = JobQueue(engine.slots_total, queue_limit, self.metrics.load_changed)
        self._usage = UsagePublisher(nc.jetstream(), linger_seconds=usage_linger_seconds)
        self._heartbeat = HeartbeatPublisher(
            nc, identity, heartbeat_interval_ms, self.load, self.metrics.nats_errors.inc
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._request_subscription: Subscription | None = None
        self._direct_subscription: Subscription | None = None
        self._cancel_subscription: Subscription | None = None

    def load(self) -> LoadReport:
        return LoadReport(
            slots_total=self._jobs.slots_total,
            slots_busy=self._jobs.busy,
            queued=self._jobs.queued,
            draining=self._draining,
        )

    async def start(self) -> None:
        await ensure_usage_stream(self._nc.jetstream(), self._stream_replicas)
        # Cancels first: a request accepted a moment later can always be cancelled.
        self._cancel_subscription = await self._nc.subscribe(
            cancel_subject(self.identity.worker_id), cb=self._on_cancel
        )
        country, route = self.identity.country, self.identity.route
        self._request_subscription = await self._nc.subscribe(
            infer_subject(country, route),
            queue=worker_queue_group(country, route),
            cb=self._on_request,
        )
        # Gateways that know this worker's load from its heartbeats address it directly.
        self._direct_subscription = await self._nc.subscribe(
            worker_infer_subject(self.identity.worker_id), cb=self._on_request
        )
        await self._wait_until_subscriptions_registered()
        self._heartbeat.start()  # the first beat goes out at once

    async def _wait_until_subscriptions_registered(self) -> None:
        """When start() returns, requests reach this worker (no "no responders").

        nats-py writes a flush's PING straight to the socket, ahead of SUB commands still
        queued for its flusher task, so one flush can return before the server has the
        subscriptions. The flusher runs during the first round trip; the second PING follows
        the SUBs on the wire, and the server answers in order."""
        await self._nc.flush()
        await self._nc.flush()

    async def drain(self) -> None:
        """Stop taking requests, finish the accepted ones, flush usage records."""
        self._draining = True
        await self._heartbeat.publish()  # gateways stop routing here before we unsubscribe
        for subscription in (self._request_subscription, self._direct_subscription):
            if subscription is not None:
                # Requests already delivered are still answered (REJECTED: the gateway retries
                # elsewhere at once instead of waiting for a timeout).
                with contextlib.suppress(Exception):
                    await subscription.drain()  # type: ignore[no-untyped-call]
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        await self._heartbeat.stop()
        await self._usage.wait_for_pending(USAGE_FLUSH_TIMEOUT_SECONDS)
        if self._cancel_subscription is not None:
            with contextlib.suppress(Exception):
                await self._cancel_subscription.unsubscribe()

    # --- requests -------------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        """Answers at once; the generation itself runs in its own task."""
        if not msg.reply:
            log.warning("request_without_reply_subject", subject=msg.subject)
            return
        try:
            request = inference_pb2.InferenceRequest.FromString(msg.data)
        except DecodeError:
            log.warning("request_malformed", size=len(msg.data))
            self.metrics.request_done("rejected")
            await self._reply(msg.reply, rejected_chunk("", self.identity, "malformed request"))
            return
        with structlog.contextvars.bound_contextvars(transaction_id=request.transaction_id):
            reason = self._rejection_reason(request)
            if reason is not None:
                log.info("request_rejected", reason=reason)
                self.metrics.request_done("rejected")
                chunk = rejected_chunk(request.transaction_id, self.identity, reason)
                await self._reply(msg.reply, chunk)
                return
            job = Job(request, generation_request(request), msg.reply)
            self._jobs.admit(job)
            if not request.accepted_by_first_chunk:
                await self._accept(job)
            self._start_ready_jobs()
            if request.accepted_by_first_chunk:
                if self._jobs.running(job.transaction_id) is job:
                    job.accept_timer = asyncio.get_running_loop().call_later(
                        ACCEPTED_DELAY_SECONDS, self._accept_now, job
                    )
                else:  # queued: its gateway must know at once that it waits here
                    await self._accept(job)
            log.debug("request_accepted", queued=self._jobs.queued, busy=self._jobs.busy)

    async def _accept(self, job: Job) -> None:
        await self._reply(job.reply_subject, accepted_chunk(job.transaction_id, self.identity))
        job.accepted.set()

    def _accept_now(self, job: Job) -> None:
        """The request had no output within ACCEPTED_DELAY_SECONDS: ACCEPTED goes first."""
        job.accept_timer = None
        self._spawn(self._accept(job))

    async def _ready_to_send(self, job: Job, chunk: inference_pb2.InferenceChunk) -> None:
        """Waits for the stream's ACCEPTED chunk to be out, so that no chunk overtakes it; the
        first chunk of a request whose ACCEPTED is still delayed is the acceptance itself."""
        if job.accept_timer is None:
            await job.accepted.wait()
            return
        job.accept_timer.cancel()
        job.accept_timer = None
        chunk.worker_id = self.identity.worker_id
        chunk.country = self.identity.country
        job.accepted.set()

    def _rejection_reason(self, request: inference_pb2.InferenceRequest) -> str | None:
        if request.route != self.identity.route:
            return f"this worker serves route '{self.identity.route}' only"
        if self._draining:
            return "worker is shutting down"
        if request.deadline_unix_ms and _now_ms() >= request.deadline_unix_ms:
            return "deadline passed before the worker received the request"
        if not self._jobs.has_room():
            return "worker queue is full"
        return None

    def _start_ready_jobs(self) -> None:
        while (job := self._jobs.start_next()) is not None:
            self._spawn(self._run_job(job))

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_job(self, job: Job) -> None:
        with structlog.contextvars.bound_contextvars(transaction_id=job.transaction_id):
            try:
                log.info("generation_started", queued=self._jobs.queued, busy=self._jobs.busy)
                finished, reader = await self._stream_generation(job)
            finally:
                self._jobs.finish(job.transaction_id)
                self._start_ready_jobs()
            await self._finish(job, finished, reader)

    async def _stream_generation(self, job: Job) -> tuple[GenerationFinished, ReaderCheck]:
        """Streams the generation, checking that the gateway still reads it: a gone gateway
        stops the generation (see reader_check.py)."""
        reader = ReaderCheck(
            self._nc,
            job.reply_subject,
            interval_seconds=self._reader_check.interval_seconds,
            timeout_seconds=self._reader_check.timeout_seconds,
            on_gone=lambda: self._engine.abort(job.transaction_id),
        )
        reader.watch()  # also while the engine sends nothing
        try:
            return await self._generate(job, reader), reader
        finally:
            reader.stop_watching()

    async def _generate(self, job: Job, reader: ReaderCheck) -> GenerationFinished:
        pieces = 0  # events of generated output, each at least one token
        json_mode = job.generation.output_format is not OutputFormat.TEXT
        text: list[str] = []
        # A client that reads the answer only at its end gets its text in a few chunks.
        gathering = TextGathering(gather=not job.request.stream)
        try:
            async with contextlib.aclosing(self._engine.generate(job.generation)) as events:
                async for event in events:
                    if isinstance(event, ContextCompressed):
                        job.dropped_messages = event.dropped_messages
                        continue
                    if isinstance(event, TextDelta):
                        job.output_generated()
                        pieces += 1
                        if json_mode:
                            text.append(event.text)
                        ready = gathering.add(event)
                        if ready is not None:
                            await self._send_delta(job, reader, ready)
                        continue
                    gathered = gathering.flush()
                    if isinstance(event, GenerationFinished):
                        job.final_text = gathered  # goes with the FINAL chunk
                        return checked_json_output(event, "".join(text)) if json_mode else event
                    if gathered is not None:
                        await self._send_delta(job, reader, gathered)
                    job.output_generated()
                    pieces += 1
                    await self._send_delta(job, reader, event)
            message = "the engine ended without a result"
        except Exception:
            log.exception("engine_failed")
            message = "the model worker failed while generating"
        # Each piece holds at least one token: a lower bound, so the partial answer is billed.
        return GenerationFinished(
            FinishReason.ERROR,
            Usage(completion_tokens=pieces),
            message,
            error_code=GENERATION_FAILED,
        )

    async def _send_delta(
        self, job: Job, reader: ReaderCheck, event: TextDelta | ReasoningDelta | ToolCallDelta
    ) -> None:
        # The gateway learns it before its first byte to the client.
        dropped = 0 if job.delta_sent else job.dropped_messages
        job.delta_sent = True
        sequence = job.next_sequence()
        if isinstance(event, ReasoningDelta):
            chunk = delta_chunk(
                job.transaction_id, sequence, reasoning=event.text, dropped_messages=dropped
            )
        elif isinstance(event, ToolCallDelta):
            chunk = delta_chunk(
                job.transaction_id, sequence, tool_calls=(event,), dropped_messages=dropped
            )
        else:
            chunk = delta_chunk(
                job.transaction_id,
                sequence,
                event.text,
                dropped_messages=dropped,
                logprobs=event.logprobs,
            )
        await self._ready_to_send(job, chunk)
        if not await self._reply(job.reply_subject, chunk):
            self._engine.abort(job.transaction_id)  # nobody can read it any more
        reader.sent()

    async def _finish(
        self, job: Job, finished: GenerationFinished, reader: ReaderCheck | None = None
    ) -> None:
        """The FINAL chunk, then the usage record: every accepted request gets both. After a
        generation, the gateway must confirm the FINAL chunk; if it does not (gone, or the
        chunk lost with a NATS outage), only what its client is known to have received is
        billed — nothing for an answer it never got."""
        chunk = final_chunk(
            job.transaction_id,
            job.next_sequence(),
            finished,
            job.dropped_messages,
            job.final_text,
        )
        await self._ready_to_send(job, chunk)
        if reader is None:
            await self._reply(job.reply_subject, chunk)
        elif not await reader.confirm_final(
            chunk.SerializeToString(), reader_expected=job.delivered_at_cancel is None
        ):
            await reader.settled()  # a check in flight may still say what was delivered
            delivered = max(reader.delivered, job.delivered_at_cancel or 0)
            finished = _billed_as_delivered(finished, delivered)
        self._usage.submit(usage_record(job.request, self.identity, finished, _now_ms()))
        usage = finished.usage
        timed = self._engine.times_tokens(job.generation)
        self.metrics.generation_finished(
            finished.finish_reason,
            usage.completion_tokens,
            job.first_text_seconds if timed else None,
            job.decode_seconds if timed else None,
        )
        log.info(
            "request_finished",
            finish_reason=finished.finish_reason.value,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            free_prompt_tokens=usage.free_prompt_tokens,
            cached_tokens=usage.cached_tokens,
            dropped_messages=job.dropped_messages or None,
            error=finished.error_message or None,
        )

    async def _reply(self, subject: str, chunk: inference_pb2.InferenceChunk) -> bool:
        try:
            await self._nc.publish(subject, chunk.SerializeToString())
        except Exception as error:  # connection closed: the stream is lost, the record is not
            self.metrics.nats_errors.inc()
            log.warning("reply_publish_failed", kind=chunk.kind, error=repr(error))
            return False
        return True

    # --- cancellation ---------------------------------------------------------------------

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = inference_pb2.CancelRequest.FromString(msg.data)
        except DecodeError:
            log.warning("cancel_malformed")
            return
        transaction_id = cancel.transaction_id
        with structlog.contextvars.bound_contextvars(transaction_id=transaction_id):
            waiting = self._jobs.withdraw_waiting(transaction_id)
            running = self._jobs.running(transaction_id)
            if waiting is not None:
                log.info("cancelled_while_queued")
                self._spawn(self._finish(waiting, GenerationFinished(FinishReason.CANCELLED)))
            elif running is not None:
                log.info("cancel_requested", delivered_deltas=cancel.delivered_deltas)
                running.delivered_at_cancel = cancel.delivered_deltas
                self._engine.abort(transaction_id)
            else:
                log.info("cancel_for_unknown_request")


def _billed_as_delivered(finished: GenerationFinished, delivered_deltas: int) -> GenerationFinished:
    """The usage of an answer whose reader vanished: the delta chunks its client received (each
    holds at least one token), nothing when it received none."""
    delivered = min(finished.usage.completion_tokens, delivered_deltas)
    return replace(
        finished,
        usage=replace(finished.usage, completion_tokens=delivered),
        unbilled_reason=finished.unbilled_reason or ("" if delivered else READER_GONE),
    )
