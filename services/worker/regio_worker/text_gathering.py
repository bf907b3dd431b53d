"""The text of an answer its client reads only at the end (a JSON answer) goes to the gateway in
a few large DELTA chunks instead of one per piece: per piece, a NATS message costs the worker,
nats-server and the gateway more than the piece itself. Gathered text is sent at least every
GATHER_SECONDS, so that a long generation still shows the gateway it is alive."""

from __future__ import annotations

import time
from collections.abc import Callable

from regio_worker.engine.base import TextDelta, TokenLogprob

GATHER_SECONDS = 0.5


class TextGathering:
    def __init__(self, gather: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self._gather = gather
        self._clock = clock
        self._texts: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self._since: float | None = None

    def add(self, delta: TextDelta) -> TextDelta | None:
        """The delta to send now (this one, or what was gathered with it), or None: held."""
        if not self._gather:
            return delta
        if self._since is None:
            self._since = self._clock()
        self._texts.append(delta.text)
        self._logprobs.extend(delta.logprobs)
        if self._clock() - self._since >= GATHER_SECONDS:
            return self.flush()
        return None

    def flush(self) -> TextDelta | None:
        """What was gathered, as one delta (None: nothing)."""
        if self._since is None:
            return None
        gathered = TextDelta("".join(self._texts), tuple(self._logprobs))
        self._texts.clear()
        self._logprobs.clear()
        self._since = None
        return gathered
