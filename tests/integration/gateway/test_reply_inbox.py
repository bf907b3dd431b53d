"""The gateway's one reply subscription against a real nats-server, with the worker's side of
the reader check: what a worker learns of a stream that is read, and of one that is not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from regio_common.reader_check import answer_reader_check, confirm_final, is_reader_check
from regio_devstack.servers import NatsServer
from regio_gateway.reply_inbox import ReplyInbox
from regio_worker.reader_check import ReaderCheck


@pytest.fixture
async def connections(nats_server: NatsServer) -> AsyncIterator[tuple[Client, Client]]:
    gateway = await nats.connect(nats_server.url)
    worker = await nats.connect(nats_server.url)
    yield gateway, worker
    await gateway.close()
    await worker.close()


def reader_check(worker: Client, subject: str, gone: list[bool]) -> ReaderCheck:
    return ReaderCheck(
        worker,
        subject,
        interval_seconds=0.0,
        timeout_seconds=2.0,
        on_gone=lambda: gone.append(True),
    )


async def test_each_stream_reads_its_own_messages_in_order(
    connections: tuple[Client, Client],
) -> None:
    gateway, worker = connections
    inbox = ReplyInbox(gateway)
    await inbox.start()
    first, second = inbox.open(), inbox.open()
    assert first.subject != second.subject
    for index in range(20):
        await worker.publish(first.subject, f"a{index}".encode())
        await worker.publish(second.subject, f"b{index}".encode())
    # nats-py writes a connection's publishes from a task of its own; on the first connection
    # of a fresh server that task was seen not to run before the reads below timed out.
    await worker.flush()
    assert [(await first.next(2.0)).data for _ in range(20)] == [
        f"a{index}".encode() for index in range(20)
    ]
    assert [(await second.next(2.0)).data for _ in range(20)] == [
        f"b{index}".encode() for index in range(20)
    ]
    with pytest.raises(TimeoutError):
        await first.next(0.05)
    first.close()
    second.close()
    assert inbox.open_count == 0


async def test_a_worker_learns_whether_its_stream_is_still_read(
    connections: tuple[Client, Client],
) -> None:
    gateway, worker = connections
    inbox = ReplyInbox(gateway)
    await inbox.start()
    read, left = inbox.open(), inbox.open()
    left.close()  # its client went away
    gone: list[bool] = []

    # A stream still read: the reader check is answered with what was delivered, the FINAL
    # chunk is confirmed.
    checking = reader_check(worker, read.subject, gone)
    checking.sent()
    check = await read.next(2.0)
    assert is_reader_check(check)
    await answer_reader_check(gateway, check, 3)
    await checking.settled()
    assert checking.delivered == 3 and not checking.gone
    final_task = asyncio.ensure_future(
        reader_check(worker, read.subject, gone).confirm_final(b"final")
    )
    final = await read.next(2.0)
    await confirm_final(gateway, final)
    assert await final_task is True

    # A stream nobody reads any more: "no responders" at once, as if the inbox were gone.
    unread = reader_check(worker, left.subject, gone)
    unread.sent()
    await unread.settled()
    assert unread.gone and gone == [True]
    assert await reader_check(worker, left.subject, gone).confirm_final(b"final") is False
