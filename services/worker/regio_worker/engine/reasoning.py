"""The reasoning phase of a generation on a thinking model: which sampled text is reasoning and
which is the answer, the reasoning budget, and the loop detector behind thinking rescue.

A thinking model writes its reasoning between two markers (`<think>`…`</think>`); the prompt
already opened the block (see reasoning_prompt.py), so a generation starts in its reasoning and
the end marker, found in the text across token boundaries, starts the answer. The markers and the
whitespace around them are never shown. When the reasoning reaches its budget or loops, the
phase is ended from outside ("rescued"): the caller feeds `forced` tokens (the end marker) to the
model without sampling them, and the model answers.

Pure: no llama.cpp here, so that the scheduler's rules can be unit-tested."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum

from regio_worker.engine.base import ReasoningEffort

# Share of max_tokens the reasoning may take when the client sets no budget; the rest is room for
# the answer. A client's budget is capped at the largest share, so that the answer has room.
BUDGET_PERCENT = {
    ReasoningEffort.MEDIUM: 50,
    ReasoningEffort.HIGH: 75,
    ReasoningEffort.MAX: 90,
}
MAX_BUDGET_PERCENT = 90

# Loop detection: over the last LOOP_WINDOW reasoning tokens, the share of LOOP_NGRAM-token
# n-grams that repeat one already in the window. Text that moves on repeats few 8-grams (a few
# per cent); a model going round in circles repeats nearly all of them. A cycle of up to about
# half the window is caught once the window is full of it.
LOOP_WINDOW = 512
LOOP_NGRAM = 8
LOOP_REPEATED_SHARE = 0.5


@dataclass(frozen=True)
class ReasoningMarkers:
    """How a model marks its reasoning (the catalogue's `thinking_start` / `thinking_end`), and
    the system prompt text that makes it reason, for models that need one (`thinking_switch`)."""

    start: str
    end: str
    switch: str = ""


class RescueReason(StrEnum):
    BUDGET = "budget"  # the reasoning reached its budget
    LOOP = "loop"  # the reasoning repeats itself


def reasoning_budget(effort: ReasoningEffort, requested: int | None, max_tokens: int) -> int:
    """Most reasoning tokens of a generation with at most `max_tokens` completion tokens: the
    client's budget up to MAX_BUDGET_PERCENT of max_tokens, else the effort's default share.
    At least 1; 0 when the effort does not reason."""
    if effort is ReasoningEffort.OFF:
        return 0
    cap = max(1, max_tokens * MAX_BUDGET_PERCENT // 100)
    if requested is not None:
        return max(1, min(requested, cap))
    return max(1, max_tokens * BUDGET_PERCENT[effort] // 100)


class LoopDetector:
    """Says when the last `window` tokens are mostly repeats of n-grams seen earlier in the
    window. O(1) per token: a count of the n-grams in the window, whose number of distinct keys
    gives the share of repeats."""

    def __init__(
        self,
        window: int = LOOP_WINDOW,
        ngram: int = LOOP_NGRAM,
        repeated_share: float = LOOP_REPEATED_SHARE,
    ) -> None:
        if not 0 < ngram < window:
            raise ValueError("the n-gram must be shorter than the window")
        self._ngram = ngram
        self._capacity = window - ngram + 1  # n-grams that fit in the window
        self._repeated_share = repeated_share
        self._recent: deque[int] = deque(maxlen=ngram)
        self._grams: deque[tuple[int, ...]] = deque()
        self._counts: Counter[tuple[int, ...]] = Counter()

    def push(self, token: int) -> bool:
        """Take the next token; True when the window is full and loops."""
        self._recent.append(token)
        if len(self._recent) < self._ngram:
            return False
        gram = tuple(self._recent)
        self._grams.append(gram)
        self._counts[gram] += 1
        if len(self._grams) > self._capacity:
            old = self._grams.popleft()
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        if len(self._grams) < self._capacity:
            return False
        repeated = 1 - len(self._counts) / self._capacity
        return repeated >= self._repeated_share


@dataclass(frozen=True)
class MarkerSplit:
    reasoning: str  # reasoning text safe to show now
    answer: str  # text after the end marker (when `ended`)
    ended: bool  # the end marker was found


class ReasoningText:
    """Splits streamed text at the end marker. Text that may be the start of the marker (or
    whitespace that may precede it) is held back until it is known; the reasoning's leading and
    trailing whitespace is dropped."""

    def __init__(self, end_marker: str) -> None:
        self._end = end_marker
        self._held = ""
        self._started = False  # some reasoning text was shown

    def feed(self, text: str) -> MarkerSplit:
        buffer = self._held + text
        at = buffer.find(self._end)
        if at >= 0:
            self._held = ""
            return MarkerSplit(
                self._shown(buffer[:at].rstrip()), buffer[at + len(self._end) :], True
            )
        cut = len(buffer) - self._partial_marker_length(buffer)
        while cut > 0 and buffer[cut - 1].isspace():
            cut -= 1
        self._held = buffer[cut:]
        return MarkerSplit(self._shown(buffer[:cut]), "", False)

    def close(self) -> str:
        """The reasoning is cut (rescue): the text held back was not the marker."""
        held, self._held = self._held, ""
        return self._shown(held.rstrip())

    def _shown(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        return text

    def _partial_marker_length(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that begins the marker."""
        for length in range(min(len(buffer), len(self._end) - 1), 0, -1):
            if self._end.startswith(buffer[-length:]):
                return length
        return 0


class Phase(Enum):
    REASONING = "reasoning"
    CLOSING = "closing"  # after the end marker, until the answer's first non-blank text
    ANSWER = "answer"


@dataclass(frozen=True)
class ReasoningStep:
    """What one sampled token adds."""

    reasoning: str = ""  # reasoning text to show
    answer: str = ""  # answer text (the answer's leading whitespace dropped)
    # The reasoning ended with this token: the answer's sampling starts now.
    closed: bool = False
    # Tokens to feed after this one without sampling them (a rescue's end marker).
    forced: tuple[int, ...] = ()


class ReasoningPhase:
    """One generation's reasoning: feed it every sampled token until `thinking` is False.

    Reasoning tokens are the sampled tokens up to the one that completes the end marker (blank
    tokens after it are answer tokens without text); a rescue's forced tokens are not sampled
    and are not counted."""

    def __init__(
        self,
        markers: ReasoningMarkers,
        *,
        budget: int,
        forced_end: Sequence[int],
        end_token: int | None = None,
        loop_detector: LoopDetector | None = None,
    ) -> None:
        """`forced_end`: the tokens of the end marker and the blank line after it;
        `end_token`: the end marker's token when it is one (it may render as no text)."""
        self._markers = markers
        self._budget = budget
        self._forced_end = tuple(forced_end)
        self._end_token = end_token
        self._loops = loop_detector or LoopDetector()
        self._text = ReasoningText(markers.end)
        self.phase = Phase.REASONING
        self.tokens = 0  # reasoning tokens sampled
        self.rescued = ""  # a RescueReason once the reasoning was cut

    @property
    def thinking(self) -> bool:
        """The answer has not begun yet."""
        return self.phase is not Phase.ANSWER

    def take(self, token: int, text: str) -> ReasoningStep:
        """The sampled `token`, whose text is `text` (as the detokenizer gave it)."""
        if self.phase is Phase.ANSWER:
            return ReasoningStep(answer=text)
        if self.phase is Phase.CLOSING:
            return self._closing(text)
        self.tokens += 1
        if token == self._end_token and self._markers.end not in text:
            text += self._markers.end  # a control token renders as no text
        split = self._text.feed(text)
        if split.ended:
            self.phase = Phase.CLOSING
            answer = self._closing(split.answer).answer
            return ReasoningStep(split.reasoning, answer, closed=True)
        loops = self._loops.push(token)
        if self.tokens >= self._budget:
            return self._rescue(RescueReason.BUDGET, split.reasoning)
        if loops:
            return self._rescue(RescueReason.LOOP, split.reasoning)
        return ReasoningStep(split.reasoning)

    def finish(self) -> str:
        """The generation ends inside its reasoning (max_tokens, end of generation): the
        reasoning text held back."""
        return self._text.close() if self.phase is Phase.REASONING else ""

    def _closing(self, text: str) -> ReasoningStep:
        answer = text.lstrip()
        if answer:
            self.phase = Phase.ANSWER
        return ReasoningStep(answer=answer)

    def _rescue(self, reason: RescueReason, reasoning: str) -> ReasoningStep:
        self.rescued = reason.value
        self.phase = Phase.CLOSING
        return ReasoningStep(reasoning + self._text.close(), closed=True, forced=self._forced_end)
