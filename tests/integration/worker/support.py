"""Types and constants shared by the worker's integration tests and their fixtures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from regio.inference.v1 import inference_pb2
from regio_common.settings import PROJECT_ROOT
from regio_worker.server import WorkerServer

# start_worker(engine, route=..., country="de", queue_limit=16, heartbeat_interval_ms=200)
StartWorker = Callable[..., Awaitable[WorkerServer]]
# read_usage_records(route, transaction_ids) -> records by their transaction id
ReadUsageRecords = Callable[[str, Collection[str]], Awaitable[dict[str, inference_pb2.UsageRecord]]]


@dataclass
class UsageMessage:
    """One usage message in JetStream: its headers and the records it holds."""

    headers: dict[str, str]
    records: list[inference_pb2.UsageRecord]


# read_usage_messages(route, transaction_ids) -> the messages holding those records (and more)
ReadUsageMessages = Callable[[str, Collection[str]], Awaitable[list[UsageMessage]]]

# Shared with `make run`, so the model is assembled once per checkout, not once per test run.
SHARED_MODELS_DIR = PROJECT_ROOT / ".regio" / "models"
