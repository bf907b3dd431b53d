"""Admission and order of the requests a worker accepted: first come, first served, at most
`slots` running and at most `queue_limit` waiting."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field

from regio.inference.v1 import inference_pb2
from regio_worker.engine.base import GenerationRequest


@dataclass
class Job:
    request: inference_pb2.InferenceRequest
    generation: GenerationRequest
    reply_subject: str
    # Set once ACCEPTED (sequence 0) is out, so that no later chunk can overtake it.
    accepted: asyncio.Event = field(default_factory=asyncio.Event)
    _sequences: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def transaction_id(self) -> str:
        return self.request.transaction_id

    def next_sequence(self) -> int:
        """Sequence numbers of the chunks after ACCEPTED: 1, 2, ..."""
        return next(self._sequences)


class JobQueue:
    def __init__(self, slots: int, queue_limit: int) -> None:
        self._slots = slots
        self._queue_limit = queue_limit
        self._waiting: deque[Job] = deque()
        self._running: dict[str, Job] = {}

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

    def start_next(self) -> Job | None:
        """The next waiting job, now counted as running, if a slot is free."""
        if self.busy >= self._slots or not self._waiting:
            return None
        job = self._waiting.popleft()
        self._running[job.transaction_id] = job
        return job

    def finish(self, transaction_id: str) -> None:
        self._running.pop(transaction_id, None)

    def is_running(self, transaction_id: str) -> bool:
        return transaction_id in self._running

    def withdraw_waiting(self, transaction_id: str) -> Job | None:
        """Take a job that has not started out of the queue (it was cancelled)."""
        for job in self._waiting:
            if job.transaction_id == transaction_id:
                self._waiting.remove(job)
                return job
        return None
