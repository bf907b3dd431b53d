"""Admission and order: first come, first served; slots and queue limit respected."""

from __future__ import annotations

import pytest

from regio.inference.v1 import inference_pb2
from regio_worker.job_queue import Job, JobQueue
from regio_worker.protocol import generation_request


def job(transaction_id: str) -> Job:
    request = inference_pb2.InferenceRequest(transaction_id=transaction_id)
    return Job(request, generation_request(request), reply_subject="_INBOX.x")


def test_jobs_start_in_arrival_order_as_slots_free() -> None:
    queue = JobQueue(slots=1, queue_limit=2)
    for name in ("a", "b", "c"):
        queue.admit(job(name))
    first = queue.start_next()
    assert first is not None and first.transaction_id == "a"
    assert queue.start_next() is None  # the only slot is busy
    assert (queue.busy, queue.queued) == (1, 2)
    queue.finish("a")
    second = queue.start_next()
    assert second is not None and second.transaction_id == "b"


def test_queue_limit_counts_only_waiting_jobs() -> None:
    queue = JobQueue(slots=1, queue_limit=1)
    queue.admit(job("running"))
    queue.start_next()
    assert queue.has_room()
    queue.admit(job("waiting"))
    assert not queue.has_room()
    with pytest.raises(RuntimeError):
        queue.admit(job("one too many"))


def test_zero_queue_limit_admits_only_into_a_free_slot() -> None:
    queue = JobQueue(slots=1, queue_limit=0)
    assert queue.has_room()
    queue.admit(job("a"))
    queue.start_next()
    assert not queue.has_room()


def test_waiting_job_can_be_withdrawn_but_a_running_one_cannot() -> None:
    queue = JobQueue(slots=1, queue_limit=4)
    queue.admit(job("running"))
    queue.start_next()
    queue.admit(job("waiting"))
    assert queue.withdraw_waiting("running") is None
    withdrawn = queue.withdraw_waiting("waiting")
    assert withdrawn is not None and withdrawn.transaction_id == "waiting"
    assert queue.queued == 0
    assert queue.running("running") is not None


def test_sequence_numbers_after_accepted_start_at_one() -> None:
    one = job("a")
    assert [one.next_sequence() for _ in range(3)] == [1, 2, 3]
