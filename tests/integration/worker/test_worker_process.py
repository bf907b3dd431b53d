"""`python -m regio_worker` as its own process. With the real model it serves a request over
NATS end to end, publishes its usage record, and on SIGTERM drains (finishing the request in
flight), announces it, and exits 0. A SIGTERM during start-up also exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from regio.inference.v1 import inference_pb2
from regio_common.subjects import heartbeat_subject
from regio_devstack.processes import free_port
from regio_devstack.servers import NatsServer
from regio_worker.probe import InferenceCall, chat_request

from .support import SHARED_MODELS_DIR, ReadUsageRecords


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log_events(self) -> list[dict[str, object]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def wait_for_event(self, name: str, timeout: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.log_events():
                if event.get("event") == name:
                    return event
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"no {name!r} in the worker log:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def country() -> str:
    return f"p{uuid.uuid4().hex[:6]}"  # a country of its own: no other worker in its group


def start_worker_process(log_path: Path, **settings: str) -> WorkerProcess:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("REGIO_")
    }
    environment.update({f"REGIO_{name.upper()}": value for name, value in settings.items()})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "regio_worker"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return WorkerProcess(process, log_path)


@pytest.fixture
def worker_process(
    nats_server: NatsServer, tmp_path: Path, country: str
) -> Iterator[WorkerProcess]:
    worker = start_worker_process(
        tmp_path / "worker.log",
        nats_url=nats_server.url,
        models_dir=str(SHARED_MODELS_DIR),
        worker_route="liv",
        worker_country=country,
        worker_threads="2",
        heartbeat_interval_ms="200",
    )
    yield worker
    worker.kill()


async def test_worker_process_serves_a_real_request_and_exits_0_on_sigterm(
    nc: Client,
    worker_process: WorkerProcess,
    country: str,
    read_usage_records: ReadUsageRecords,
) -> None:
    ready = worker_process.wait_for_event("worker_ready", timeout=60)
    assert (ready["route"], ready["country"]) == ("liv", country)
    beats = await nc.subscribe(heartbeat_subject(country, "liv"))

    request = chat_request("Tell me about the sea.", route="liv", max_tokens=12)
    call = await InferenceCall.open(nc, country, "liv", request)
    accepted = await call.next_chunk(wait_seconds=10)
    assert accepted.kind == inference_pb2.CHUNK_KIND_ACCEPTED
    assert accepted.worker_id == ready["worker_id"]
    first = await call.next_chunk(wait_seconds=30)
    assert (first.kind, first.sequence) == (inference_pb2.CHUNK_KIND_DELTA, 1)

    worker_process.process.send_signal(signal.SIGTERM)  # while the request is in flight
    rest = await call.until_end(wait_seconds=30)
    final = rest[-1]
    assert final.kind == inference_pb2.CHUNK_KIND_FINAL
    assert final.finish_reason == inference_pb2.FINISH_REASON_LENGTH  # finished, not cut off
    assert final.usage.completion_tokens == 12
    assert final.usage.prompt_tokens > 5
    assert [chunk.sequence for chunk in [first, *rest]] == list(range(1, len(rest) + 2))
    text = "".join(chunk.text_delta for chunk in [first, *rest])
    assert text

    exit_code = await asyncio.to_thread(worker_process.process.wait, 30)
    assert exit_code == 0
    events = [event["event"] for event in worker_process.log_events()]
    assert events.index("worker_draining") < events.index("worker_stopped")
    heartbeats = [
        inference_pb2.WorkerHeartbeat.FromString((await beats.next_msg(timeout=1)).data)
        for _ in range(beats.pending_msgs)
    ]
    assert any(beat.draining for beat in heartbeats)

    records = await read_usage_records("liv", [request.transaction_id])
    record = records[request.transaction_id]
    assert (record.country, record.worker_id) == (country, ready["worker_id"])
    assert (record.prompt_tokens, record.completion_tokens) == (
        final.usage.prompt_tokens,
        final.usage.completion_tokens,
    )
    assert record.billable


def test_sigterm_while_waiting_for_nats_at_start_up_exits_0(tmp_path: Path) -> None:
    unreachable = f"nats://127.0.0.1:{free_port()}"
    worker = start_worker_process(
        tmp_path / "worker.log", nats_url=unreachable, worker_engine="scripted"
    )
    try:
        worker.wait_for_event("nats_error", timeout=30)  # retrying the first connect
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=15) == 0
    finally:
        worker.kill()
    events = [event["event"] for event in worker.log_events()]
    assert "worker_ready" not in events
    assert "start_up_cancelled" in events
