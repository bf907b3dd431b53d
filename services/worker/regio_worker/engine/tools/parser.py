"""The streaming parser of an answer that may call tools: text outside `<tool_call>` blocks goes
on as TextDelta, each complete block as one ToolCallDelta (the whole call in one piece, with a
new id, `call_` and 24 letters or digits), and the answer finishes with FinishReason.TOOL_CALLS
when it made calls.

Text that may be the start of `<tool_call>` is held back until it is known not to be (as stop
strings are), and so is whitespace, which is dropped when a call follows it: `content` does not
end with the blank line before a call. A block that is not a call (cut by max_tokens, or not a
declared function with an arguments object) is returned as text, unchanged.

The answer is complete after its first call when parallel calls are off, and when the model
repeats a call of the same answer (same function, same arguments: small models loop on the
grammar's "another call?"); the repeat is dropped, and the engine stops generating.

Log-probabilities ride with the text: those of a call's tokens are left out."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import replace

from regio_worker.engine.base import (
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
)
from regio_worker.engine.tool_call_ids import new_tool_call_id
from regio_worker.engine.tools.markup import TOOL_CALL_END, TOOL_CALL_START


class ToolCallParser:
    def __init__(
        self,
        tool_names: Collection[str],
        *,
        parallel: bool,
        new_id: Callable[[], str] = new_tool_call_id,
    ) -> None:
        self._names = frozenset(tool_names)
        self._parallel = parallel
        self._new_id = new_id
        self._held = ""  # outside a block: text not sent yet; inside: the block so far
        self._inside = False
        self._logprobs: list[TokenLogprob] = []  # of the text not sent yet
        self._sent: set[tuple[str, str]] = set()  # (name, arguments) of the calls sent
        self._repeated = False
        self.calls = 0

    @property
    def complete(self) -> bool:
        """Nothing more counts: the engine may stop generating."""
        return self._repeated or (self.calls > 0 and not self._parallel)

    def events(self, event: GenerationEvent) -> list[GenerationEvent]:
        """What the caller sends on for one event of the engine (other events pass as they
        are: reasoning comes before the answer and is no part of it)."""
        if isinstance(event, TextDelta):
            return self.feed(event)
        if isinstance(event, GenerationFinished):
            return self.finish(event)
        return [event]

    def feed(self, delta: TextDelta) -> list[GenerationEvent]:
        if self.complete:
            return []
        if not self._inside:
            self._logprobs.extend(delta.logprobs)
        self._held += delta.text
        events: list[GenerationEvent] = []
        while not self.complete and self._step(events):
            pass
        return events

    def finish(self, final: GenerationFinished) -> list[GenerationEvent]:
        """The rest of the text, then the final event: TOOL_CALLS when calls were made and the
        model stopped by itself, or the answer was complete (whatever stopped the engine
        then)."""
        events: list[GenerationEvent] = []
        if self._inside and not self.complete:
            # Never closed: not a call.
            self._send_text(events, TOOL_CALL_START + self._held, force=True)
        elif not self.complete and not (self.calls and self._held.isspace()):
            self._send_text(events, self._held, force=not self.calls)
        self._held, self._inside = "", False
        if (self.complete and final.finish_reason is not FinishReason.ERROR) or (
            self.calls and final.finish_reason is FinishReason.STOP
        ):
            final = replace(final, finish_reason=FinishReason.TOOL_CALLS)
        events.append(final)
        return events

    def _step(self, events: list[GenerationEvent]) -> bool:
        """Consume what can be decided of the held text; True when there may be more."""
        if self._inside:
            end = self._held.find(TOOL_CALL_END)
            if end < 0:
                return False
            body, self._held = self._held[:end], self._held[end + len(TOOL_CALL_END) :]
            self._inside = False
            self._logprobs.clear()  # the call's tokens
            self._end_block(events, body)
            return True
        start = self._held.find(TOOL_CALL_START)
        if start >= 0:
            before, self._held = self._held[:start], self._held[start + len(TOOL_CALL_START) :]
            self._send_text(events, before.rstrip())  # whitespace before a call is layout
            self._logprobs.clear()
            self._inside = True
            return True
        keep = _undecided_length(self._held)
        self._send_text(events, self._held[: len(self._held) - keep])
        self._held = self._held[len(self._held) - keep :]
        return False

    def _end_block(self, events: list[GenerationEvent], body: str) -> None:
        call = self._call(body)
        if call is None:
            self._send_text(events, TOOL_CALL_START + body + TOOL_CALL_END)
            return
        if call in self._sent:
            self._repeated = True
            return
        self._sent.add(call)
        name, arguments = call
        events.append(ToolCallDelta(self.calls, self._new_id(), name, arguments))
        self.calls += 1

    def _call(self, body: str) -> tuple[str, str] | None:
        """(name, compact JSON arguments) of a block that is a call of a declared function."""
        try:
            call = json.loads(body)
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in self._names:
            return None
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        compact = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        return str(call["name"]), compact

    def _send_text(self, events: list[GenerationEvent], text: str, *, force: bool = False) -> None:
        """Emit `text` with the log-probabilities gathered so far; `force`: also when there is
        no text but there are log-probabilities (tokens without text at the end)."""
        if text or (force and self._logprobs):
            events.append(TextDelta(text, tuple(self._logprobs)))
            self._logprobs.clear()


def _undecided_length(text: str) -> int:
    """Length of the end of `text` that may still turn out to be layout before a call: the
    longest end that begins `<tool_call>`, and the whitespace before it."""
    partial = 0
    for length in range(min(len(text), len(TOOL_CALL_START) - 1), 0, -1):
        if TOOL_CALL_START.startswith(text[-length:]):
            partial = length
            break
    rest = text[: len(text) - partial]
    return partial + len(rest) - len(rest.rstrip())
