"""Fixtures of the worker's integration tests: NATS clients, in-process workers on a test's own
route (so that tests sharing the session's nats-server never see each other's workers), the
usage records in JetStream, and the real Gemma model file."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from google.protobuf.message import DecodeError
from llama_cpp import Llama
from nats.aio.client import Client
from nats.aio.msg import Msg

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Catalogue, Route
from regio_common.ids import new_worker_id
from regio_common.settings import DEFAULT_CATALOGUE
from regio_common.subjects import usage_subject
from regio_common.usage_stream import usage_records
from regio_devstack.servers import NatsServer
from regio_worker.engine.base import Engine
from regio_worker.model_files import resolve_model_path
from regio_worker.protocol import WorkerIdentity
from regio_worker.server import ReaderCheckTiming, WorkerServer
from regio_worker.usage_publisher import LINGER_SECONDS

from .support import (
    SHARED_MODELS_DIR,
    ReadUsageMessages,
    ReadUsageRecords,
    StartWorker,
    UsageMessage,
)


@pytest.fixture
def route_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    # close, not drain: nats-py's drain waits for next_msg() subscriptions until its timeout.
    await client.close()


@pytest.fixture
async def start_worker(nats_server: NatsServer) -> AsyncIterator[StartWorker]:
    """start_worker(engine, route=..., country="de", queue_limit=16, heartbeat_interval_ms=200,
    reader_check=None, usage_linger_seconds=0.02)
    serves `engine` in this process on its own NATS connection; drained after the test."""
    started: list[tuple[WorkerServer, Client]] = []

    async def start(
        engine: Engine,
        *,
        route: str,
        country: str = "de",
        queue_limit: int = 16,
        heartbeat_interval_ms: int = 200,
        reader_check: ReaderCheckTiming | None = None,
        usage_linger_seconds: float = LINGER_SECONDS,
    ) -> WorkerServer:
        connection = await nats.connect(nats_server.url)
        identity = WorkerIdentity(new_worker_id(country, route), country, route)
        server = WorkerServer(
            connection,
            engine,
            identity,
            queue_limit=queue_limit,
            heartbeat_interval_ms=heartbeat_interval_ms,
            reader_check=reader_check,
            usage_linger_seconds=usage_linger_seconds,
        )
        await server.start()
        started.append((server, connection))
        return server

    yield start
    for server, connection in started:
        await server.drain()
        with contextlib.suppress(Exception):  # a test may have closed it already
            await connection.drain()


@pytest.fixture
async def read_usage_messages(nc: Client) -> ReadUsageMessages:
    """read_usage_messages(route, transaction_ids): the route's usage messages in JetStream
    (headers and records); waits for the records of `transaction_ids`, then briefly for more."""
    js = nc.jetstream()

    async def read(route: str, transaction_ids: Collection[str]) -> list[UsageMessage]:
        subscription = await js.subscribe(usage_subject(route), ordered_consumer=True)
        messages: list[UsageMessage] = []

        def seen() -> set[str]:
            return {r.transaction_id for message in messages for r in message.records}

        try:
            while not set(transaction_ids) <= seen():
                _add_message(messages, await subscription.next_msg(timeout=10))
            with contextlib.suppress(nats.errors.TimeoutError):
                while True:
                    _add_message(messages, await subscription.next_msg(timeout=0.3))
        finally:
            await subscription.unsubscribe()
        return messages

    return read


@pytest.fixture
def read_usage_records(read_usage_messages: ReadUsageMessages) -> ReadUsageRecords:
    """read_usage_records(route, transaction_ids): the route's usage records by transaction,
    from the messages read_usage_messages reads."""

    async def read(
        route: str, transaction_ids: Collection[str]
    ) -> dict[str, inference_pb2.UsageRecord]:
        messages = await read_usage_messages(route, transaction_ids)
        return {r.transaction_id: r for message in messages for r in message.records}

    return read


def _add_message(messages: list[UsageMessage], msg: Msg) -> None:
    # The stream is shared by the whole test session; other suites publish malformed records
    # on purpose (billing's poison-message tests).
    with contextlib.suppress(DecodeError):
        messages.append(UsageMessage(dict(msg.headers or {}), usage_records(msg.data, msg.headers)))


@pytest.fixture(scope="session")
def gemma_route() -> Route:
    return Catalogue.load(DEFAULT_CATALOGUE).routes["liv"]


@pytest.fixture(scope="session")
def gemma_model_path(gemma_route: Route) -> Path:
    return resolve_model_path(gemma_route.source, SHARED_MODELS_DIR)


@pytest.fixture(scope="module")
def vocabulary(gemma_model_path: Path) -> Iterator[Llama]:
    """The model's vocabulary only (no weights): an independent tokenizer to check the engine's
    token counts and grammars against."""
    tokenizer = Llama(model_path=str(gemma_model_path), vocab_only=True, verbose=False)
    yield tokenizer
    tokenizer.close()
