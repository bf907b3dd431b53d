"""Liveness and country preference from worker heartbeats."""

from __future__ import annotations

from regio.inference.v1 import inference_pb2
from regio_gateway.worker_registry import WorkerRegistry


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def heartbeat(
    worker: str, country: str, busy: int = 0, draining: bool = False
) -> inference_pb2.WorkerHeartbeat:
    return inference_pb2.WorkerHeartbeat(
        worker_id=worker,
        country=country,
        route="liv",
        slots_total=4,
        slots_busy=busy,
        interval_ms=1000,
        draining=draining,
    )


def test_countries_with_more_spare_capacity_come_first() -> None:
    clock = FakeClock()
    registry = WorkerRegistry(expiry_factor=3, clock=clock)
    registry.observe(heartbeat("w1", "de", busy=4))
    registry.observe(heartbeat("w2", "nl", busy=1))
    assert registry.countries_by_preference("liv", ["de", "nl"]) == ["nl", "de"]
    assert registry.countries_by_preference("liv", ["de"]) == ["de"]
    assert registry.countries_by_preference("clara", ["de", "nl"]) == []


def test_silent_and_draining_workers_are_not_live() -> None:
    clock = FakeClock()
    registry = WorkerRegistry(expiry_factor=3, clock=clock)
    registry.observe(heartbeat("w1", "de"))
    clock.now = 2.9
    assert registry.countries_by_preference("liv", ["de"]) == ["de"]
    clock.now = 3.1
    assert registry.countries_by_preference("liv", ["de"]) == []
    assert registry.live_workers() == []
    registry.observe(heartbeat("w1", "de", draining=True))
    assert registry.countries_by_preference("liv", ["de"]) == []


def test_workers_are_offered_least_loaded_first_within_the_region_only() -> None:
    registry = WorkerRegistry(expiry_factor=3, clock=FakeClock())
    registry.observe(heartbeat("full", "de", busy=4))
    registry.observe(heartbeat("idle", "de", busy=0))
    registry.observe(heartbeat("half", "de", busy=2))
    registry.observe(heartbeat("abroad", "nl", busy=0))
    ordered = registry.workers_by_preference("liv", ["de"])
    assert [worker.worker_id for worker in ordered] == ["idle", "half", "full"]


def test_a_dispatch_counts_against_a_worker_until_its_next_heartbeat() -> None:
    registry = WorkerRegistry(expiry_factor=3, clock=FakeClock())
    registry.observe(heartbeat("a", "de", busy=1))
    registry.observe(heartbeat("b", "de", busy=2))
    registry.note_dispatched("a")
    registry.note_dispatched("a")  # a now looks busier than b: 3 of 4 slots
    assert [w.worker_id for w in registry.workers_by_preference("liv", ["de"])] == ["b", "a"]
    registry.observe(heartbeat("a", "de", busy=0))  # the truth replaces the estimate
    assert registry.workers_by_preference("liv", ["de"])[0].worker_id == "a"
