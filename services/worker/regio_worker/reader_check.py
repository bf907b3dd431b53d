"""Is the gateway that reads a stream still there, and what has its client received?

A worker publishes a stream's chunks with plain NATS publishes, which succeed whether or not
anyone reads them: if the gateway process dies, the worker would generate (and bill) an answer
nobody receives. So while it streams, the worker asks the reading gateway now and then — at the
first delta an interval after the stream began, then at most every interval — with a NATS
request on the stream's reply inbox (an answer shorter than the interval costs no check: its
confirmed FINAL chunk says all that is needed).
The gateway answers with how many delta chunks its client has received (none for a JSON answer
before its end); NATS answers "no responders" at once when the inbox has no subscriber any more.
A check that merely times out (a busy gateway) says nothing. The FINAL chunk, too, goes as a
request the gateway confirms: an answer lost on the way (a NATS outage) is not billed.

While the engine sends nothing (a long prompt being read, or an upstream server generating a
whole answer, which arrives only at its end), a timer asks all the same, an interval after the
last check."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import nats.errors
import structlog
from nats.aio.client import Client

from regio_common.reader_check import READER_CHECK_HEADER

log = structlog.get_logger()

# How long a finished generation waits for a check still in flight (NATS answers "no
# responders" within a round trip; a live gateway answers once it has read the deltas before).
SETTLE_WAIT_SECONDS = 0.25


class ReaderCheck:
    def __init__(
        self,
        nc: Client,
        subject: str,
        *,
        interval_seconds: float,
        timeout_seconds: float,
        on_gone: Callable[[], None],
    ) -> None:
        self._nc = nc
        self._subject = subject
        self._interval = interval_seconds
        self._timeout = timeout_seconds
        self._on_gone = on_gone
        # The stream's start counts as a check: the first one comes an interval later.
        self._last_check = time.monotonic()
        self._in_flight: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.gone = False
        # Delta chunks the client has received, as the gateway last said.
        self.delivered = 0

    def sent(self) -> None:
        """A delta chunk went out: check now if the interval has passed."""
        self._check_if_due()

    def _check_if_due(self) -> None:
        if self.gone or (self._in_flight is not None and not self._in_flight.done()):
            return
        now = time.monotonic()
        if now - self._last_check >= self._interval:
            self._last_check = now
            self._in_flight = asyncio.create_task(self._check())

    def watch(self) -> None:
        """Checks also while nothing is sent, an interval after the last check, until
        `stop_watching`. A timer, not a task: most answers end before it fires."""
        due = self._last_check + self._interval - time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(max(due, 0.0), self._on_timer)

    def stop_watching(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.gone:
            return
        self._check_if_due()
        self.watch()

    async def settled(self) -> None:
        """Gives a check in flight a moment to answer before the bill is made: a gone gateway
        is reported at once; a slow one must not keep the finished job's slot."""
        if self._in_flight is not None and not self._in_flight.done():
            await asyncio.wait({self._in_flight}, timeout=SETTLE_WAIT_SECONDS)

    async def confirm_final(self, final_chunk: bytes, *, reader_expected: bool = True) -> bool:
        """Sends the FINAL chunk as a request: True once the gateway has confirmed it. False
        when no gateway reads the stream any more or none answered in time. `reader_expected`
        False: the gateway cancelled the stream, so it is no surprise that nobody reads."""
        try:
            await self._nc.request(self._subject, final_chunk, timeout=self._timeout)
        except nats.errors.NoRespondersError:
            if reader_expected:
                log.warning("final_not_confirmed", reason="reader gone")
            else:
                log.info("final_unread_after_cancel")
            return False
        except (nats.errors.Error, TimeoutError) as error:
            log.warning("final_not_confirmed", reason=repr(error))
            return False
        return True

    async def _check(self) -> None:
        try:
            answer = await self._nc.request(
                self._subject, b"", timeout=self._timeout, headers={READER_CHECK_HEADER: "1"}
            )
        except nats.errors.NoRespondersError:
            self.gone = True
            log.warning("reader_gone", delivered_deltas=self.delivered)
            self._on_gone()
            return
        except (nats.errors.Error, TimeoutError):
            return  # a slow or disconnected gateway link proves nothing either way
        with contextlib.suppress(ValueError):
            self.delivered = max(self.delivered, int(answer.data or b"0"))
