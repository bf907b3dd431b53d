"""Which workers are alive, where, and how busy: built from their heartbeats."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from regio.inference.v1 import inference_pb2


@dataclass
class WorkerState:
    heartbeat: inference_pb2.WorkerHeartbeat
    received_at: float

    @property
    def free_capacity(self) -> int:
        hb = self.heartbeat
        return int(hb.slots_total) - int(hb.slots_busy) - int(hb.queued)


class WorkerRegistry:
    def __init__(
        self, expiry_factor: float = 3.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._workers: dict[str, WorkerState] = {}
        self._expiry_factor = expiry_factor
        self._clock = clock

    def observe(self, heartbeat: inference_pb2.WorkerHeartbeat) -> None:
        self._workers[heartbeat.worker_id] = WorkerState(heartbeat, self._clock())

    def forget(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    def _alive(self, state: WorkerState, now: float) -> bool:
        interval = max(state.heartbeat.interval_ms, 100) / 1000
        return (
            not state.heartbeat.draining
            and now - state.received_at <= interval * self._expiry_factor
        )

    def live_workers(self) -> list[inference_pb2.WorkerHeartbeat]:
        now = self._clock()
        for worker_id in [w for w, s in self._workers.items() if not self._alive(s, now)]:
            del self._workers[worker_id]
        return [state.heartbeat for state in self._workers.values()]

    def workers_by_preference(
        self, route: str, countries: list[str]
    ) -> list[inference_pb2.WorkerHeartbeat]:
        """Live workers of the route in these countries, most spare capacity first (free slots
        minus queued requests; ties in random order, so that gateways spread their load)."""
        now = self._clock()
        states = [
            state
            for state in self._workers.values()
            if state.heartbeat.route == route
            and state.heartbeat.country in countries
            and self._alive(state, now)
        ]
        random.shuffle(states)
        states.sort(key=lambda state: state.free_capacity, reverse=True)
        return [state.heartbeat for state in states]

    def note_dispatched(self, worker_id: str) -> None:
        """Count a request just handed to a worker until its next heartbeat says how busy it
        really is: a burst arriving between two beats spreads over the workers."""
        state = self._workers.get(worker_id)
        if state is not None:
            beat = inference_pb2.WorkerHeartbeat()
            beat.CopyFrom(state.heartbeat)
            if beat.slots_busy < beat.slots_total:
                beat.slots_busy += 1
            else:
                beat.queued += 1
            state.heartbeat = beat

    def countries_by_preference(self, route: str, countries: list[str]) -> list[str]:
        """Countries of the region with a live worker for the route, most spare capacity first."""
        now = self._clock()
        capacity: dict[str, int] = {}
        for state in self._workers.values():
            hb = state.heartbeat
            if hb.route == route and hb.country in countries and self._alive(state, now):
                capacity[hb.country] = capacity.get(hb.country, 0) + state.free_capacity
        ordered = list(capacity)
        random.shuffle(ordered)  # spread ties
        return sorted(ordered, key=lambda country: capacity[country], reverse=True)
