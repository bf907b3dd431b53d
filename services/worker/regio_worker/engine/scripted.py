"""A fake engine for tests of the serving path: it answers every request with the same text
pieces, one "token" per piece, at a configurable pace, with honest counts.

Token counting is by whitespace-separated words: prompt_tokens counts the words of the messages,
free_prompt_tokens those of the free system prompt. With logprobs, every piece has the
log-probability SCRIPTED_LOGPROB and is the most likely of its top_logprobs, followed by
alternatives " alt1", " alt2", ... with lower ones; logit_bias is accepted and ignored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from regio_worker.engine.base import (
    Engine,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)

DEFAULT_PIECES = ("Hello", " from", " the", " scripted", " worker", ".")
SCRIPTED_LOGPROB = -0.125  # exact in float32, as the protocol carries it


class ScriptedEngineFailure(RuntimeError):
    """Raised on purpose by a ScriptedEngine configured with `fail_after_pieces`."""


class ScriptedEngine(Engine):
    def __init__(
        self,
        pieces: Sequence[str] = DEFAULT_PIECES,
        *,
        delay_seconds: float = 0.0,
        slots: int = 1,
        fail_after_pieces: int | None = None,
    ) -> None:
        self._pieces = tuple(pieces)
        self._delay = delay_seconds
        self._slots = slots
        self._fail_after = fail_after_pieces
        self._aborted: set[str] = set()
        self._running: set[str] = set()
        self.requests: list[GenerationRequest] = []  # what it was asked, for assertions

    @property
    def slots_total(self) -> int:
        return self._slots

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        self._running.add(request.transaction_id)
        free_tokens = _word_count(request.free_system_prompt)
        prompt_tokens = sum(_word_count(message.content) for message in request.messages)
        limit = len(self._pieces) if request.max_tokens is None else request.max_tokens
        sent = 0
        finish = FinishReason.STOP
        try:
            for piece in self._pieces:
                if request.transaction_id in self._aborted:
                    finish = FinishReason.CANCELLED
                    break
                if sent >= limit:
                    finish = FinishReason.LENGTH
                    break
                if self._fail_after is not None and sent >= self._fail_after:
                    raise ScriptedEngineFailure(f"scripted failure after {sent} pieces")
                if self._delay:
                    await asyncio.sleep(self._delay)
                sent += 1
                yield TextDelta(piece, _logprobs(piece, request.top_logprobs))
            usage = Usage(
                prompt_tokens=prompt_tokens, completion_tokens=sent, free_prompt_tokens=free_tokens
            )
            yield GenerationFinished(finish, usage)
        finally:
            self._running.discard(request.transaction_id)
            self._aborted.discard(request.transaction_id)

    def abort(self, transaction_id: str) -> None:
        if transaction_id in self._running:
            self._aborted.add(transaction_id)

    async def close(self) -> None:
        self._aborted.update(self._running)


def _logprobs(piece: str, top_logprobs: int | None) -> tuple[TokenLogprob, ...]:
    if top_logprobs is None:
        return ()
    token = piece.encode()
    top = [TopLogprob(token, SCRIPTED_LOGPROB)]
    top += [TopLogprob(f" alt{rank}".encode(), -2.0 - rank) for rank in range(1, top_logprobs)]
    return (TokenLogprob(token, SCRIPTED_LOGPROB, tuple(top[:top_logprobs])),)


def _word_count(text: str) -> int:
    return len(text.split())
