"""Stop strings: a possible start of a stop string is held back; a stop string never leaks."""

from __future__ import annotations

from regio_worker.engine.stop_strings import StopStringFilter


def feed_all(stop_filter: StopStringFilter, pieces: list[str]) -> list[str]:
    return [stop_filter.feed(piece) for piece in pieces]


def test_text_without_stop_strings_passes_through() -> None:
    stop_filter = StopStringFilter([])
    assert feed_all(stop_filter, ["Hello", " world", "!"]) == ["Hello", " world", "!"]
    assert stop_filter.flush() == ""
    assert not stop_filter.stopped


def test_possible_start_of_a_stop_string_is_held_back_until_it_diverges() -> None:
    stop_filter = StopStringFilter(["STOP"])
    assert stop_filter.feed("Hello S") == "Hello "
    assert stop_filter.feed("T") == ""
    assert stop_filter.feed("ay") == "STay"
    assert not stop_filter.stopped


def test_stop_string_split_over_pieces_stops_and_is_never_emitted() -> None:
    stop_filter = StopStringFilter(["STOP"])
    emitted = feed_all(stop_filter, ["one S", "T", "O", "P two"])
    assert "".join(emitted) == "one "
    assert stop_filter.stopped
    assert stop_filter.feed("more") == ""
    assert stop_filter.flush() == ""


def test_text_before_a_stop_string_in_the_same_piece_is_emitted() -> None:
    stop_filter = StopStringFilter(["\n\n"])
    assert stop_filter.feed("line one\n\nline two") == "line one"
    assert stop_filter.stopped


def test_earliest_of_several_stop_strings_wins() -> None:
    stop_filter = StopStringFilter(["world", "lo"])
    assert stop_filter.feed("Hello world") == "Hel"


def test_stop_string_at_the_very_start_emits_nothing() -> None:
    stop_filter = StopStringFilter(["###"])
    assert feed_all(stop_filter, ["#", "##", " heading"]) == ["", "", ""]
    assert stop_filter.stopped


def test_held_text_is_released_by_flush_at_the_end() -> None:
    stop_filter = StopStringFilter(["</answer>"])
    assert stop_filter.feed("42 </ans") == "42 "
    assert stop_filter.flush() == "</ans"
    assert stop_filter.flush() == ""


def test_longest_possible_prefix_is_held_with_overlapping_stop_strings() -> None:
    stop_filter = StopStringFilter(["abc", "bcd"])
    assert stop_filter.feed("xab") == "x"  # "ab" may start "abc"
    assert stop_filter.feed("cd") == ""  # "abc" completes first
    assert stop_filter.stopped


def test_empty_stop_strings_are_ignored() -> None:
    stop_filter = StopStringFilter(["", "END"])
    assert stop_filter.feed("text") == "text"
