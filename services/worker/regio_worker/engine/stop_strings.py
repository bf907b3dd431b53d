"""Stop strings over streamed text: text that might be the start of a stop string is held back
until it is known not to be, so that no part of a stop string ever reaches the client."""

from __future__ import annotations

from collections.abc import Iterable


class StopStringFilter:
    def __init__(self, stop_strings: Iterable[str]) -> None:
        self._stops = tuple(stop for stop in stop_strings if stop)
        self._longest = max((len(stop) for stop in self._stops), default=0)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of the text so far that is safe to emit now; sets `stopped` (and drops the
        stop string and everything after it) when a stop string is complete."""
        if self.stopped:
            return ""
        buffer = self._held + text
        match_at = self._earliest_match(buffer)
        if match_at is not None:
            self.stopped = True
            self._held = ""
            return buffer[:match_at]
        held = self._partial_match_length(buffer)
        self._held = buffer[len(buffer) - held :]
        return buffer[: len(buffer) - held]

    def flush(self) -> str:
        """At the end of the generation (no stop string): the held text was not a stop."""
        if self.stopped:
            return ""
        held, self._held = self._held, ""
        return held

    def _earliest_match(self, buffer: str) -> int | None:
        positions = [buffer.find(stop) for stop in self._stops]
        found = [position for position in positions if position >= 0]
        return min(found) if found else None

    def _partial_match_length(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that begins some stop string."""
        for length in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0
