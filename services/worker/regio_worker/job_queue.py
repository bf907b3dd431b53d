"""Admission and order of the requests a worker accepted: first come, first served, at most
`slots` running and at most `queue_limit` waiting."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from regio.inference.v1 import inference_pb2
from regio_worker.engine.base import GenerationRequest, TextDelta


@dataclass
class Job:
    request: inference_pb2.InferenceRequest
    generation: GenerationRequest
    reply_subject: str
    # Set once ACCEPTED (sequence 0) is out, so that no later chunk can overtake it, or once
    # the first chunk carries the acceptance itself (see InferenceRequest.accepted_by_first_chunk).
    accepted: asyncio.Event = field(default_factory=asyncio.Event)
    # Pending while ACCEPTED is delayed for the first output to say it instead.
    accept_timer: asyncio.TimerHandle | None = None
    _sequences: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Monotonic times, for the time to first token (queueing included) and the decode speed.
    admitted_at: float = field(default_factory=time.monotonic)
    first_text_at: float | None = None
    last_text_at: float | None = None
    # Messages the engine left out of the middle of the conversation (ContextCompressed).
    dropped_messages: int = 0
    # Whether a DELTA chunk went out yet (the first one says how the prompt was compressed).
    delta_sent: bool = False
    # Delta chunks the gateway said its client received when it cancelled the stream; None:
    # the gateway did not cancel it.
    delivered_at_cancel: int | None = None
    # The last gathered text of an answer read at its end, sent with the FINAL chunk.
    final_text: TextDelta | None = None

    @property
    def transaction_id(self) -> str:
        return self.request.transaction_id

    def next_sequence(self) -> int:
        """Sequence numbers of the chunks after ACCEPTED: 1, 2, ..."""
        return next(self._sequences)

    def output_generated(self) -> None:
        """A piece of output came from the engine (sent now, or gathered for later)."""
        now = time.monotonic()
        if self.first_text_at is None:
            self.first_text_at = now
        self.last_text_at = now

    @property
    def first_text_seconds(self) -> float | None:
        return None if self.first_text_at is None else self.first_text_at - self.admitted_at

    @property
    def decode_seconds(self) -> float | None:
        if self.first_text_at is None or self.last_text_at is None:
            return None
        return self.last_text_at - self.first_text_at


LoadListener = Callable[[int, int], None]  # (queued, free slots)


class JobQueue:
    def __init__(
        self, slots: int, queue_limit: int, on_load_change: LoadListener | None = None
    ) -> None:
        self._slots = slots
        self._queue_limit = queue_limit
        self._waiting: deque[Job] = deque()
        self._running: dict[str, Job] = {}
        self._on_load_change = on_load_change
        self._load_changed()

    def _load_changed(self) -> None:
        if self._on_load_change is not None:
            self._on_load_change(self.queued, self._slots - self.busy)

    @property
    def slots_total(self) -> int:
        return self._slots

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def has_room(self) -> bool:
        return self.busy < self._slots or self.queued < self._queue_limit

    def admit(self, job: Job) -> None:
        if not self.has_room():
            raise RuntimeError("the job queue is full")
        self._waiting.append(job)
        self._load_changed()

    def start_next(self) -> Job | None:
        """The next waiting job, now counted as running, if a slot is free."""
        if self.busy >= self._slots or not self._waiting:
            return None
        job = self._waiting.popleft()
        self._running[job.transaction_id] = job
        self._load_changed()
        return job

    def finish(self, transaction_id: str) -> None:
        if self._running.pop(transaction_id, None) is not None:
            self._load_changed()

    def running(self, transaction_id: str) -> Job | None:
        return self._running.get(transaction_id)

    def withdraw_waiting(self, transaction_id: str) -> Job | None:
        """Take a job that has not started out of the queue (it was cancelled)."""
        for job in self._waiting:
            if job.transaction_id == transaction_id:
                self._waiting.remove(job)
                self._load_changed()
                return job
        return None
