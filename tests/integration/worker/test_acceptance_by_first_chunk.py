"""A request whose gateway takes the first chunk as acceptance (accepted_by_first_chunk): a
fast answer comes without an ACCEPTED chunk, a slow or queued one still gets it first; read by
the gateway's own dispatcher, a FINAL chunk that accepted a request is confirmed only when it
is read, and its worker learns at once when it never will be."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from regio.inference.v1 import inference_pb2
from regio_common.subjects import heartbeat_subject
from regio_gateway.dispatch import Dispatcher
from regio_gateway.metrics import GatewayMetrics
from regio_gateway.reply_inbox import ReplyInbox
from regio_gateway.worker_registry import WorkerRegistry
from regio_worker.engine.scripted import ScriptedEngine
from regio_worker.probe import InferenceCall, chat_request
from regio_worker.server import ReaderCheckTiming

from .support import ReadUsageRecords, StartWorker

ACCEPTED = inference_pb2.CHUNK_KIND_ACCEPTED
DELTA = inference_pb2.CHUNK_KIND_DELTA
FINAL = inference_pb2.CHUNK_KIND_FINAL


def request(prompt: str, route: str, *, stream: bool) -> inference_pb2.InferenceRequest:
    sent = chat_request(prompt, route=route, stream=stream)
    sent.accepted_by_first_chunk = True
    return sent


async def test_a_fast_answer_is_accepted_by_its_final_chunk(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    server = await start_worker(ScriptedEngine(["a", "b"]), route=route_name)
    call = await InferenceCall.open(nc, "de", route_name, request("hi", route_name, stream=False))

    (final,) = await call.until_end()

    assert (final.kind, final.sequence, final.text_delta) == (FINAL, 1, "ab")
    assert (final.worker_id, final.country) == (server.identity.worker_id, "de")


async def test_a_fast_stream_is_accepted_by_its_first_delta(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    server = await start_worker(ScriptedEngine(["a", "b"]), route=route_name)
    call = await InferenceCall.open(nc, "de", route_name, request("hi", route_name, stream=True))

    chunks = await call.until_end()

    assert [(c.kind, c.sequence) for c in chunks] == [(DELTA, 1), (DELTA, 2), (FINAL, 3)]
    assert chunks[0].worker_id == server.identity.worker_id


async def test_a_request_without_output_within_the_delay_is_accepted_first(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    await start_worker(ScriptedEngine(["a"], delay_seconds=0.2), route=route_name)
    call = await InferenceCall.open(nc, "de", route_name, request("hi", route_name, stream=True))

    first = await call.next_chunk(wait_seconds=0.15)  # long before the first output

    assert (first.kind, first.sequence) == (ACCEPTED, 0)
    assert [c.kind for c in await call.until_end()] == [DELTA, FINAL]


async def test_a_queued_request_is_accepted_at_once(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    await start_worker(ScriptedEngine(["x"] * 20, delay_seconds=0.05), route=route_name)
    running = await InferenceCall.open(
        nc, "de", route_name, request("first", route_name, stream=True)
    )
    queued = await InferenceCall.open(
        nc, "de", route_name, request("second", route_name, stream=True)
    )

    assert (await queued.next_chunk(wait_seconds=0.5)).kind == ACCEPTED  # the first still runs
    assert [c.kind for c in await running.until_end()][-1] == FINAL
    assert [c.kind for c in await queued.until_end()][-1] == FINAL


@pytest.fixture
def registry() -> WorkerRegistry:
    return WorkerRegistry()


async def hear_heartbeat(nc: Client, registry: WorkerRegistry, route: str) -> None:
    """The worker's next heartbeat in the registry, as a gateway learns of its workers."""
    subscription = await nc.subscribe(heartbeat_subject("de", route))
    msg = await subscription.next_msg(timeout=5)
    await subscription.unsubscribe()
    registry.observe(inference_pb2.WorkerHeartbeat.FromString(msg.data))


@pytest.fixture
async def dispatcher(nc: Client, registry: WorkerRegistry) -> AsyncIterator[Dispatcher]:
    inbox = ReplyInbox(nc)
    await inbox.start()
    yield Dispatcher(
        nc,
        inbox,
        registry,
        accept_timeout=3.0,
        first_chunk_timeout=10.0,
        inter_chunk_timeout=10.0,
        metrics=GatewayMetrics(),
    )


async def test_the_gateway_reads_and_confirms_a_final_chunk_that_accepted_the_request(
    nc: Client,
    registry: WorkerRegistry,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    route_name: str,
    read_usage_records: ReadUsageRecords,
) -> None:
    server = await start_worker(ScriptedEngine(["a", "b"]), route=route_name)
    await hear_heartbeat(nc, registry, route_name)
    sent = chat_request("one two", route=route_name, stream=False)

    stream = await dispatcher.open(sent, ["de"])
    chunks = [chunk async for chunk in stream.chunks()]
    await stream.close()

    assert sent.accepted_by_first_chunk  # the dispatcher asks for it
    assert stream.worker_id == server.identity.worker_id
    assert [(c.kind, c.text_delta) for c in chunks] == [(FINAL, "ab")]
    record = (await read_usage_records(route_name, [sent.transaction_id]))[sent.transaction_id]
    assert record.billable and record.completion_tokens == 2  # confirmed: billed


async def test_a_final_chunk_never_read_is_not_billed_and_its_worker_learns_at_once(
    nc: Client,
    registry: WorkerRegistry,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    route_name: str,
    read_usage_records: ReadUsageRecords,
) -> None:
    # A confirmation that merely failed to come would be waited for this long.
    patient = ReaderCheckTiming(interval_seconds=1.0, timeout_seconds=30.0)
    await start_worker(ScriptedEngine(["a", "b"]), route=route_name, reader_check=patient)
    await hear_heartbeat(nc, registry, route_name)
    sent = chat_request("one two", route=route_name, stream=False)

    stream = await dispatcher.open(sent, ["de"])  # e.g. its hold was refused: never read
    started = time.monotonic()
    await stream.close()

    record = (await read_usage_records(route_name, [sent.transaction_id]))[sent.transaction_id]
    assert time.monotonic() - started < 5.0
    assert not record.billable
    assert (record.completion_tokens, record.unbilled_reason) == (0, "reader_gone")
