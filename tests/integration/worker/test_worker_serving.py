"""The serving path over a real nats-server, with the scripted engine: protocol order, usage
records in JetStream, cancellation, admission, queue groups, heartbeats and draining."""

from __future__ import annotations

import asyncio
import time

import nats.errors
import pytest
from nats.aio.client import Client

from regio.inference.v1 import inference_pb2
from regio_common.reader_check import is_reader_check
from regio_common.subjects import heartbeat_subject, infer_subject
from regio_common.usage_stream import MSG_ID_HEADER, USAGE_BATCH_HEADER
from regio_worker.engine.scripted import ScriptedEngine
from regio_worker.probe import InferenceCall, chat_request
from regio_worker.server import ReaderCheckTiming

from .support import ReadUsageMessages, ReadUsageRecords, StartWorker

ACCEPTED = inference_pb2.CHUNK_KIND_ACCEPTED
DELTA = inference_pb2.CHUNK_KIND_DELTA
FINAL = inference_pb2.CHUNK_KIND_FINAL
REJECTED = inference_pb2.CHUNK_KIND_REJECTED


async def test_accepted_then_ordered_deltas_then_one_final_with_usage(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    engine = ScriptedEngine(["Hel", "lo", " there"])
    server = await start_worker(engine, route=route_name)
    request = chat_request("say hi", route=route_name, free_system_prompt="be nice", max_tokens=9)
    call = await InferenceCall.open(nc, "de", route_name, request)
    chunks = await call.until_end()

    accepted, *deltas, final = chunks
    assert accepted.kind == ACCEPTED and accepted.sequence == 0
    assert accepted.transaction_id == request.transaction_id
    assert (accepted.worker_id, accepted.country) == (server.identity.worker_id, "de")
    assert [(c.kind, c.sequence, c.text_delta) for c in deltas] == [
        (DELTA, 1, "Hel"),
        (DELTA, 2, "lo"),
        (DELTA, 3, " there"),
    ]
    assert final.kind == FINAL and final.sequence == 4
    assert final.finish_reason == inference_pb2.FINISH_REASON_STOP
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (2, 3)
    assert final.usage.free_prompt_tokens == 2
    with pytest.raises(nats.errors.TimeoutError):  # nothing after FINAL
        await call.next_chunk(wait_seconds=0.3)
    sent = engine.requests[0]
    assert (sent.free_system_prompt, sent.max_tokens) == ("be nice", 9)


async def test_usage_record_reaches_jetstream_with_the_transaction_as_message_id(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_messages: ReadUsageMessages
) -> None:
    server = await start_worker(ScriptedEngine(["a", "b"]), route=route_name)
    request = chat_request("one two three", route=route_name, free_system_prompt="free")
    before_ms = int(time.time() * 1000)
    await (await InferenceCall.open(nc, "de", route_name, request)).until_end()

    (message,) = await read_usage_messages(route_name, [request.transaction_id])
    # A record alone is a plain UsageRecord, as billing of any version reads it.
    assert message.headers == {MSG_ID_HEADER: request.transaction_id}
    (record,) = message.records
    assert record.transaction_id == request.transaction_id
    assert (record.account_id, record.route, record.region) == ("probe", route_name, "probe")
    assert (record.country, record.worker_id) == ("de", server.identity.worker_id)
    assert (record.prompt_tokens, record.completion_tokens, record.free_prompt_tokens) == (3, 2, 1)
    assert record.finish_reason == inference_pb2.FINISH_REASON_STOP
    assert record.billable
    assert before_ms <= record.finished_unix_ms <= int(time.time() * 1000)


async def test_cancel_mid_stream_stops_the_generation_and_still_sends_final(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    server = await start_worker(ScriptedEngine(["x"] * 200, delay_seconds=0.02), route=route_name)
    request = chat_request("go", route=route_name)
    call = await InferenceCall.open(nc, "de", route_name, request)
    assert (await call.next_chunk()).kind == ACCEPTED
    for _ in range(3):
        assert (await call.next_chunk()).kind == DELTA
    await call.cancel(server.identity.worker_id)
    rest = await call.until_end(wait_seconds=2)

    final = rest[-1]
    deltas_received = 3 + len(rest) - 1
    assert final.kind == FINAL
    assert final.finish_reason == inference_pb2.FINISH_REASON_CANCELLED
    assert final.usage.completion_tokens == deltas_received < 20
    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    assert record.finish_reason == inference_pb2.FINISH_REASON_CANCELLED
    assert record.completion_tokens == deltas_received
    assert record.billable  # tokens were produced before the cancel


QUICK_READER_CHECK = ReaderCheckTiming(interval_seconds=0.05, timeout_seconds=0.5)


async def test_a_vanished_gateway_stops_the_generation_and_bills_what_its_client_got(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    engine = ScriptedEngine(["x"] * 400, delay_seconds=0.02)
    server = await start_worker(engine, route=route_name, reader_check=QUICK_READER_CHECK)
    # A reader that answers the worker's checks for a while, then vanishes without a cancel
    # (as a killed gateway's inbox does).
    request = chat_request("go", route=route_name, max_tokens=400)
    call = await InferenceCall.open(nc, "de", route_name, request)
    assert (await call.next_chunk()).kind == ACCEPTED
    for _ in range(10):
        assert (await call.next_chunk()).kind == DELTA
    await call.close()

    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    # Stopped within a few checks, not after 400 pieces (8 s); billed: at most what was read.
    assert record.finish_reason == inference_pb2.FINISH_REASON_CANCELLED
    assert 1 <= record.completion_tokens <= 10
    assert record.billable
    assert server.load().slots_busy == 0


async def test_an_answer_read_only_at_its_end_comes_with_its_final_chunk(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    await start_worker(ScriptedEngine(["one", " two", " three"]), route=route_name)
    streamed = await InferenceCall.open(nc, "de", route_name, chat_request("go", route=route_name))
    whole = await InferenceCall.open(
        nc, "de", route_name, chat_request("go", route=route_name, stream=False)
    )
    streamed_chunks = await streamed.until_end()
    whole_chunks = await whole.until_end()
    assert [c.kind for c in streamed_chunks] == [ACCEPTED, DELTA, DELTA, DELTA, FINAL]
    # All of its text rides on the FINAL chunk: one NATS message for the whole answer.
    assert [c.kind for c in whole_chunks] == [ACCEPTED, FINAL]
    assert whole_chunks[-1].text_delta == "one two three"
    assert whole_chunks[-1].usage.completion_tokens == 3


async def test_a_gateway_that_cancels_and_leaves_gets_billed_what_it_said_it_delivered(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    # A gateway whose client stalled: it stopped reading a while ago (no check was answered),
    # then cancels, naming the chunks its client took, and leaves.
    server = await start_worker(ScriptedEngine(["x"] * 400, delay_seconds=0.01), route=route_name)
    request = chat_request("go", route=route_name, max_tokens=400)
    call = await InferenceCall.open(nc, "de", route_name, request)
    assert (await call.next_chunk()).kind == ACCEPTED
    for _ in range(5):
        assert (await call.next_chunk()).kind == DELTA
    await call.cancel(server.identity.worker_id, delivered_deltas=4)
    await call.close()

    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    assert record.finish_reason == inference_pb2.FINISH_REASON_CANCELLED
    assert record.completion_tokens == 4
    assert record.billable


async def test_a_gateway_gone_before_the_first_token_is_not_billed(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    await start_worker(
        ScriptedEngine(["x"] * 400, delay_seconds=0.02),
        route=route_name,
        reader_check=QUICK_READER_CHECK,
    )
    request = chat_request("go", route=route_name, max_tokens=400)
    call = await InferenceCall.open(nc, "de", route_name, request)
    assert (await call.next_chunk()).kind == ACCEPTED
    await call.close()  # gone before reading any text

    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    assert record.finish_reason == inference_pb2.FINISH_REASON_CANCELLED
    assert record.completion_tokens == 0
    assert not record.billable
    assert record.unbilled_reason == "reader_gone"


async def test_an_answer_whose_final_chunk_is_never_confirmed_is_not_billed(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    # A reader that receives every chunk but answers nothing: as if the chunks were lost on the
    # way (a NATS outage), so that the gateway never had the answer.
    await start_worker(
        ScriptedEngine(["a", "b"]), route=route_name, reader_check=QUICK_READER_CHECK
    )
    request = chat_request("go", route=route_name)
    inbox = nc.new_inbox()
    silent = await nc.subscribe(inbox)
    await nc.publish(infer_subject("de", route_name), request.SerializeToString(), reply=inbox)
    kinds: list[int] = []
    while not kinds or kinds[-1] != FINAL:
        msg = await silent.next_msg(timeout=5)
        if not is_reader_check(msg):
            kinds.append(inference_pb2.InferenceChunk.FromString(msg.data).kind)
    assert kinds == [ACCEPTED, DELTA, DELTA, FINAL]

    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    assert record.completion_tokens == 0
    assert not record.billable
    assert record.unbilled_reason == "reader_gone"
    await silent.unsubscribe()


async def test_records_finishing_during_a_publish_share_the_next_message(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_messages: ReadUsageMessages
) -> None:
    await start_worker(ScriptedEngine(["x"], slots=40), route=route_name, queue_limit=40)
    requests = [chat_request(f"request {n}", route=route_name) for n in range(40)]
    calls = [await InferenceCall.open(nc, "de", route_name, request) for request in requests]
    await asyncio.gather(*(call.until_end() for call in calls))

    expected = [request.transaction_id for request in requests]
    messages = await read_usage_messages(route_name, expected)
    published = [r.transaction_id for message in messages for r in message.records]
    assert sorted(published) == sorted(expected)  # each record once
    assert len(messages) < len(expected)  # 40 requests ending together: batches formed
    for message in messages:
        if len(message.records) == 1:
            assert message.headers == {MSG_ID_HEADER: message.records[0].transaction_id}
            continue
        count = len(message.records)
        assert message.headers == {
            MSG_ID_HEADER: f"{message.records[0].transaction_id}+{count}",
            USAGE_BATCH_HEADER: str(count),
        }


async def test_records_of_requests_one_after_another_wait_for_each_other_within_the_linger(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_messages: ReadUsageMessages
) -> None:
    """One client's requests, each sent when the last one ended: without the linger each
    record would be a message of its own (nothing is in flight when the next one ends)."""
    await start_worker(ScriptedEngine(["x"]), route=route_name, usage_linger_seconds=1.0)
    requests = [chat_request(f"request {n}", route=route_name) for n in range(5)]
    started = time.monotonic()
    for request in requests:
        await (await InferenceCall.open(nc, "de", route_name, request)).until_end()
    assert time.monotonic() - started < 1.0  # the test's premise: all within the linger

    expected = [request.transaction_id for request in requests]
    (message,) = await read_usage_messages(route_name, expected)
    assert [record.transaction_id for record in message.records] == expected
    assert message.headers[USAGE_BATCH_HEADER] == "5"


async def test_a_draining_worker_publishes_the_records_still_lingering(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    server = await start_worker(ScriptedEngine(["x"]), route=route_name, usage_linger_seconds=30)
    request = chat_request("last one", route=route_name)
    await (await InferenceCall.open(nc, "de", route_name, request)).until_end()
    started = time.monotonic()
    await server.drain()

    assert time.monotonic() - started < 30  # a stop does not wait out the linger
    records = await read_usage_records(route_name, [request.transaction_id])
    assert records[request.transaction_id].billable


async def test_cancel_of_a_queued_request_drops_it_with_zero_usage(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    engine = ScriptedEngine(["x"] * 100, delay_seconds=0.02)
    server = await start_worker(engine, route=route_name)
    running = await InferenceCall.open(nc, "de", route_name, chat_request("a", route=route_name))
    assert (await running.next_chunk()).kind == ACCEPTED
    queued_request = chat_request("b", route=route_name)
    queued = await InferenceCall.open(nc, "de", route_name, queued_request)
    assert (await queued.next_chunk()).kind == ACCEPTED

    await queued.cancel(server.identity.worker_id)
    final = await queued.next_chunk(wait_seconds=1)  # long before the running one ends
    assert (final.kind, final.sequence) == (FINAL, 1)
    assert final.finish_reason == inference_pb2.FINISH_REASON_CANCELLED
    assert final.usage.prompt_tokens == final.usage.completion_tokens == 0
    assert [r.transaction_id for r in engine.requests] == [running.transaction_id]

    await running.cancel(server.identity.worker_id)
    await running.until_end()
    records = await read_usage_records(
        route_name, [running.transaction_id, queued_request.transaction_id]
    )
    assert not records[queued_request.transaction_id].billable
    assert records[queued_request.transaction_id].completion_tokens == 0


async def test_full_queue_rejects_and_records_no_usage(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    server = await start_worker(
        ScriptedEngine(["x"] * 5, delay_seconds=0.05), route=route_name, queue_limit=1
    )
    calls = []
    for prompt in ("running", "queued"):
        call = await InferenceCall.open(
            nc, "de", route_name, chat_request(prompt, route=route_name)
        )
        assert (await call.next_chunk()).kind == ACCEPTED
        calls.append(call)
    busy_request = chat_request("one too many", route=route_name)
    rejected = await (await InferenceCall.open(nc, "de", route_name, busy_request)).until_end()

    assert len(rejected) == 1
    assert (rejected[0].kind, rejected[0].sequence) == (REJECTED, 0)
    assert rejected[0].worker_id == server.identity.worker_id
    assert "queue is full" in rejected[0].error_message
    for call in calls:
        assert (await call.until_end())[-1].finish_reason == inference_pb2.FINISH_REASON_STOP
    records = await read_usage_records(route_name, [call.transaction_id for call in calls])
    assert busy_request.transaction_id not in records
    assert set(records) == {call.transaction_id for call in calls}


async def test_request_past_its_deadline_is_rejected_unstarted(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    engine = ScriptedEngine(["x"])
    await start_worker(engine, route=route_name)
    late = chat_request("hi", route=route_name, deadline_unix_ms=int(time.time() * 1000) - 1)
    chunks = await (await InferenceCall.open(nc, "de", route_name, late)).until_end()
    assert [c.kind for c in chunks] == [REJECTED]
    assert "deadline" in chunks[0].error_message
    assert engine.requests == []

    timely = chat_request("hi", route=route_name, deadline_unix_ms=int(time.time() * 1000) + 5000)
    chunks = await (await InferenceCall.open(nc, "de", route_name, timely)).until_end()
    assert chunks[0].kind == ACCEPTED and chunks[-1].kind == FINAL


async def test_two_workers_in_one_queue_group_share_the_requests(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    engines = [ScriptedEngine(["a", "b"], delay_seconds=0.01) for _ in range(2)]
    servers = [await start_worker(engine, route=route_name) for engine in engines]

    async def one_request(index: int) -> list[inference_pb2.InferenceChunk]:
        request = chat_request(f"request {index}", route=route_name)
        call = await InferenceCall.open(nc, "de", route_name, request)
        return await call.until_end()

    results = await asyncio.gather(*(one_request(index) for index in range(16)))
    assert all(chunks[-1].kind == FINAL for chunks in results)
    serving = {chunks[0].worker_id for chunks in results}
    assert serving == {server.identity.worker_id for server in servers}
    assert sum(len(engine.requests) for engine in engines) == 16  # each served exactly once


async def test_engine_failure_still_ends_with_a_final_error_and_a_usage_record(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    await start_worker(ScriptedEngine(["a", "b", "c"], fail_after_pieces=2), route=route_name)
    partial = chat_request("x", route=route_name)
    chunks = await (await InferenceCall.open(nc, "de", route_name, partial)).until_end()
    assert [c.kind for c in chunks] == [ACCEPTED, DELTA, DELTA, FINAL]
    assert chunks[-1].finish_reason == inference_pb2.FINISH_REASON_ERROR
    assert chunks[-1].error_message
    record = (await read_usage_records(route_name, [partial.transaction_id]))[
        partial.transaction_id
    ]
    assert record.finish_reason == inference_pb2.FINISH_REASON_ERROR
    assert record.completion_tokens == 2 and record.billable


async def test_engine_failure_before_any_token_is_not_billable(
    nc: Client, start_worker: StartWorker, route_name: str, read_usage_records: ReadUsageRecords
) -> None:
    await start_worker(ScriptedEngine(["a"], fail_after_pieces=0), route=route_name)
    request = chat_request("x", route=route_name)
    chunks = await (await InferenceCall.open(nc, "de", route_name, request)).until_end()
    assert [c.kind for c in chunks] == [ACCEPTED, FINAL]
    record = (await read_usage_records(route_name, [request.transaction_id]))[
        request.transaction_id
    ]
    assert record.finish_reason == inference_pb2.FINISH_REASON_ERROR
    assert not record.billable


async def test_heartbeats_report_load_and_then_draining(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    beats = await nc.subscribe(heartbeat_subject("de", route_name))
    server = await start_worker(
        ScriptedEngine(["x"] * 30, delay_seconds=0.02), route=route_name, heartbeat_interval_ms=100
    )
    first = inference_pb2.WorkerHeartbeat.FromString((await beats.next_msg(timeout=1)).data)
    assert (first.worker_id, first.country, first.route) == (
        server.identity.worker_id,
        "de",
        route_name,
    )
    assert (first.slots_total, first.slots_busy, first.queued) == (1, 0, 0)
    assert first.interval_ms == 100 and not first.draining

    call = await InferenceCall.open(nc, "de", route_name, chat_request("x", route=route_name))
    await call.next_chunk()
    busy = inference_pb2.WorkerHeartbeat.FromString((await beats.next_msg(timeout=1)).data)
    while busy.slots_busy == 0:  # a beat sent before the request arrived
        busy = inference_pb2.WorkerHeartbeat.FromString((await beats.next_msg(timeout=1)).data)
    assert busy.slots_busy == 1

    await server.drain()
    draining = [
        inference_pb2.WorkerHeartbeat.FromString(msg.data).draining
        for msg in [await beats.next_msg(timeout=1) for _ in range(beats.pending_msgs)]
    ]
    assert draining and draining[-1]


async def test_drain_finishes_in_flight_requests_then_takes_no_more(
    nc: Client, start_worker: StartWorker, route_name: str
) -> None:
    server = await start_worker(ScriptedEngine(["x"] * 10, delay_seconds=0.03), route=route_name)
    call = await InferenceCall.open(nc, "de", route_name, chat_request("x", route=route_name))
    assert (await call.next_chunk()).kind == ACCEPTED
    drained = asyncio.create_task(server.drain())
    chunks = await call.until_end()
    await drained
    assert chunks[-1].finish_reason == inference_pb2.FINISH_REASON_STOP
    assert chunks[-1].usage.completion_tokens == 10
    with pytest.raises(nats.errors.NoRespondersError):
        payload = chat_request("late", route=route_name).SerializeToString()
        await nc.request(infer_subject("de", route_name), payload, timeout=1)
