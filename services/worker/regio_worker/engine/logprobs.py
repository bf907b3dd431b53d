"""Log-probabilities and logit bias on a row of llama.cpp's logits, with numpy in float32.

What the numbers are: the log-softmax of the model's logits **plus the request's logit_bias**,
before anything else the sampler does (repetition penalties, the JSON grammar, temperature,
top-k, top-p, min-p). That is the model's own distribution as the client shaped it with
logit_bias, the same whatever the temperature, so a greedy answer's tokens are always the most
likely of their `top_logprobs` (unless a grammar or penalty chose another token).

Nothing here runs for a request that asks for neither: the scheduler keeps its plain argmax
or llama.cpp sampler for those."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy
from numpy.typing import NDArray

from regio_worker.engine.base import TokenLogprob, TopLogprob

MAX_TOP_LOGPROBS = 20

Logits = NDArray[numpy.float32]


class LogitBias:
    """A request's logit_bias as numpy index and value arrays."""

    def __init__(self, bias: Sequence[tuple[int, float]]) -> None:
        self.ids = numpy.array([token for token, _ in bias], dtype=numpy.int64)
        self.values = numpy.array([value for _, value in bias], dtype=numpy.float32)

    def apply(self, logits: Logits) -> Logits:
        """A biased copy: `logits` is llama.cpp's own buffer, which stays as it is."""
        biased = logits.copy()
        numpy.add.at(biased, self.ids, self.values)  # add.at: repeated ids add up
        return biased


class LogSoftmax:
    """log-softmax of a row of logits in float32, computed stably and only where asked:
    logprob(token) = (logit - max) - log(sum(exp(logits - max))). Subtracting the max first
    keeps the precision of float32 whatever the logits' magnitude."""

    def __init__(self, logits: Logits) -> None:
        self._logits = logits
        self._peak = logits.max()
        shifted = numpy.subtract(logits, self._peak, dtype=numpy.float32)
        numpy.exp(shifted, out=shifted)
        self._log_sum = numpy.log(shifted.sum(dtype=numpy.float32))

    def __getitem__(self, token: int) -> float:
        return float((self._logits[token] - self._peak) - self._log_sum)


def top_tokens(logits: Logits, count: int) -> list[int]:
    """The `count` most likely token ids, most likely first (ties: lower id first)."""
    if count <= 0:
        return []
    count = min(count, logits.shape[0])
    candidates = numpy.argpartition(logits, logits.shape[0] - count)[-count:]
    # lexsort's last key is the primary one: descending logit, then ascending id.
    order = numpy.lexsort((candidates, -logits[candidates]))
    return [int(token) for token in candidates[order]]


def token_logprob(
    logits: Logits, token: int, top_n: int, token_bytes: Callable[[int], bytes]
) -> TokenLogprob:
    """The log-probability of `token` and of the `top_n` most likely tokens under `logits`."""
    logprobs = LogSoftmax(logits)
    top = tuple(
        TopLogprob(token_bytes(other), logprobs[other]) for other in top_tokens(logits, top_n)
    )
    return TokenLogprob(token_bytes(token), logprobs[token], top)


@dataclass
class _Pending:
    start: int  # byte offset of the token's text in the whole answer
    end: int
    entry: TokenLogprob


@dataclass
class LogprobTracker:
    """One generation's tokens waiting to go out with the text they produced.

    The text of a token can be held back (part of a UTF-8 character, or the possible start of a
    stop string), so a token's log-probability goes out with the first delta that carries any
    of its bytes. Tokens whose text never goes out (the part of the answer a stop string cuts
    off, the end-of-generation token) are not reported: the tokens' bytes add up to the answer,
    as OpenAI's do."""

    top_n: int
    drawn: TokenLogprob | None = None  # set by the sampling thread, taken by `sampled`
    _pending: deque[_Pending] = field(default_factory=deque)
    _generated: int = 0  # bytes of the tokens sampled so far
    _emitted: int = 0  # bytes of the text sent so far

    def sampled(self) -> None:
        """The token just drawn is part of the answer."""
        entry, self.drawn = self.drawn, None
        assert entry is not None
        start, self._generated = self._generated, self._generated + len(entry.token)
        self._pending.append(_Pending(start, self._generated, entry))

    def take(self, text: str, *, end: bool = False) -> tuple[TokenLogprob, ...]:
        """The tokens to send with `text`; `end`: the answer is complete (every token left
        produced text already sent or none at all)."""
        self._emitted += len(text.encode())
        taken: list[TokenLogprob] = []
        pending = self._pending
        while pending and (
            end or pending[0].start < self._emitted or pending[0].end <= self._emitted
        ):
            taken.append(pending.popleft().entry)
        return tuple(taken)
