"""A JSON answer's text reaches the gateway in few chunks; a streamed one piece by piece."""

from __future__ import annotations

from regio_worker.engine.base import TextDelta, TokenLogprob
from regio_worker.text_gathering import GATHER_SECONDS, TextGathering


def test_a_streamed_answer_goes_out_piece_by_piece() -> None:
    gathering = TextGathering(gather=False)
    assert gathering.add(TextDelta("a")) == TextDelta("a")
    assert gathering.flush() is None


def test_a_json_answer_is_gathered_and_sent_at_least_every_interval() -> None:
    now = [0.0]
    gathering = TextGathering(gather=True, clock=lambda: now[0])
    first = TokenLogprob(token=b"He", logprob=-0.1)
    second = TokenLogprob(token=b"llo", logprob=-0.2)
    assert gathering.add(TextDelta("He", (first,))) is None
    now[0] += GATHER_SECONDS / 2
    assert gathering.add(TextDelta("llo", (second,))) is None
    now[0] += GATHER_SECONDS / 2
    # Half a second after the first held piece, everything held goes out as one delta.
    assert gathering.add(TextDelta(" you")) == TextDelta("Hello you", (first, second))
    assert gathering.flush() is None
    assert gathering.add(TextDelta("!")) is None
    assert gathering.flush() == TextDelta("!")
