"""Incremental detokenization: characters split over tokens come out whole, exactly once."""

from __future__ import annotations

from regio_worker.engine.detokenizer import IncrementalDetokenizer

REPLACEMENT = "\N{REPLACEMENT CHARACTER}"


def detokenizer_over(pieces: dict[int, bytes]) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(pieces.__getitem__)


def test_ascii_tokens_come_out_as_they_are() -> None:
    detokenizer = detokenizer_over({1: b"Hello", 2: b" world"})
    assert [detokenizer.push(1), detokenizer.push(2)] == ["Hello", " world"]
    assert detokenizer.flush() == ""


def test_emoji_over_four_byte_tokens_is_emitted_once_complete() -> None:
    emoji = "\N{GRINNING FACE}".encode()
    detokenizer = detokenizer_over({index: emoji[index : index + 1] for index in range(4)})
    assert [detokenizer.push(index) for index in range(4)] == ["", "", "", "\N{GRINNING FACE}"]


def test_two_byte_character_split_between_text_tokens() -> None:
    umlaut = "ö".encode()
    detokenizer = detokenizer_over({1: b"w" + umlaut[:1], 2: umlaut[1:] + b"rld"})
    assert detokenizer.push(1) == "w"
    assert detokenizer.push(2) == "örld"


def test_invalid_bytes_become_replacement_characters_without_failing() -> None:
    detokenizer = detokenizer_over({1: b"a\xff", 2: b"b"})
    assert detokenizer.push(1) == "a" + REPLACEMENT
    assert detokenizer.push(2) == "b"


def test_an_interrupted_character_is_replaced_when_the_next_token_does_not_continue_it() -> None:
    detokenizer = detokenizer_over({1: "é".encode()[:1], 2: b"x"})
    assert detokenizer.push(1) == ""
    assert detokenizer.push(2) == REPLACEMENT + "x"


def test_flush_reports_a_dangling_partial_character() -> None:
    detokenizer = detokenizer_over({1: b"ok", 2: "€".encode()[:2]})
    assert detokenizer.push(1) == "ok"
    assert detokenizer.push(2) == ""
    assert detokenizer.flush() == REPLACEMENT


def test_empty_pieces_of_control_tokens_yield_nothing() -> None:
    detokenizer = detokenizer_over({106: b"", 1: b"x"})
    assert detokenizer.push(106) == ""
    assert detokenizer.push(1) == "x"
