"""One NATS subscription for the replies to every request this gateway dispatches.

Each dispatched request gets its own subject under the gateway's inbox prefix; the worker's
chunks, reader checks and FINAL chunk arrive there, in order. A subscription per request would
cost a SUB and an UNSUB for every request, and nats-py's `next_msg` a task per message.

A worker that asks something of a request no longer read here (its client left, its stream was
given up) is answered as NATS answers a request to a subject nobody listens to: status 503, "no
responders". The worker then knows its reader is gone, exactly as when it had its own inbox."""

from __future__ import annotations

import asyncio
import itertools

from nats.aio.client import Client
from nats.aio.msg import Msg

from regio_common.reader_check import answer_nobody_reads


class Replies:
    """The messages of one dispatched request's subject, in arrival order."""

    def __init__(self, subject: str, inbox: ReplyInbox) -> None:
        self.subject = subject
        self._inbox = inbox
        self._messages: asyncio.Queue[Msg] = asyncio.Queue()

    def deliver(self, msg: Msg) -> None:
        self._messages.put_nowait(msg)

    def waiting(self) -> bool:
        """Whether a message has arrived that `next` has not returned yet."""
        return not self._messages.empty()

    async def next(self, within_seconds: float) -> Msg:
        """The next message; raises TimeoutError after `within_seconds` without one."""
        if not self._messages.empty():
            # Already here (e.g. a FINAL chunk that came while billing held the credit): no
            # timer to start and cancel (≈ 3 % of the gateway's samples at 32 clients).
            return self._messages.get_nowait()
        async with asyncio.timeout(within_seconds):
            return await self._messages.get()

    def close(self) -> None:
        """Later messages to this subject are answered "no responders" (or dropped)."""
        self._inbox.forget(self.subject)


class ReplyInbox:
    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()  # random: unique to this gateway process
        self._tokens = itertools.count(1)
        self._open: dict[str, Replies] = {}

    async def start(self) -> None:
        """Subscribes (for the connection's life: draining the connection ends it), and
        returns once the server has the subscription: from then on, whatever any connection
        publishes to the inbox arrives."""
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)
        await self._nc.flush()

    def open(self) -> Replies:
        replies = Replies(f"{self._prefix}.{next(self._tokens)}", self)
        self._open[replies.subject] = replies
        return replies

    def forget(self, subject: str) -> None:
        self._open.pop(subject, None)

    @property
    def open_count(self) -> int:
        return len(self._open)

    async def _route(self, msg: Msg) -> None:
        replies = self._open.get(msg.subject)
        if replies is not None:
            replies.deliver(msg)
        elif msg.reply:
            await answer_nobody_reads(self._nc, msg)
