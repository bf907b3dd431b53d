"""Opaque cursors and the list envelope of the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from regio_common.errors import InvalidRequest
from regio_dashboard.pagination import (
    DEFAULT_LIMIT,
    Page,
    decode_cursor,
    encode_cursor,
    page_request,
    time_position,
)


def test_a_cursor_round_trips_and_is_opaque() -> None:
    cursor = encode_cursor("api_keys", ["2025-01-02T03:04:05.123456+00:00", "key_1"])
    assert "key_1" not in cursor and "=" not in cursor
    assert decode_cursor("api_keys", cursor, 2) == ("2025-01-02T03:04:05.123456+00:00", "key_1")


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%",
        "bm90IGpzb24",  # "not json"
        encode_cursor("accounts", ["2025-01-01T00:00:00+00:00", "acct_1"]),  # another list
        encode_cursor("api_keys", ["only-one"]),
    ],
)
def test_a_foreign_or_broken_cursor_is_a_400_on_after(cursor: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_cursor("api_keys", cursor, 2)
    assert caught.value.param == "after" and caught.value.status == 400


def test_limit_defaults_and_bounds() -> None:
    assert page_request("accounts", {}).limit == DEFAULT_LIMIT
    assert page_request("accounts", {"limit": "100"}).fetch == 101
    for bad in ("0", "101", "-1", "x", ""):
        with pytest.raises(InvalidRequest) as caught:
            page_request("accounts", {"limit": bad})
        assert caught.value.param == "limit"


def test_a_time_cursor_must_hold_a_time() -> None:
    moment = datetime(2025, 1, 2, tzinfo=UTC)
    page = page_request("accounts", {"after": encode_cursor("accounts", [moment.isoformat(), "a"])})
    assert time_position(page) == (moment, "a")
    broken = page_request("accounts", {"after": encode_cursor("accounts", ["yesterday", "a"])})
    with pytest.raises(InvalidRequest):
        time_position(broken)


def test_a_page_says_whether_there_is_more_and_where_it_ended() -> None:
    request = page_request("letters", {"limit": "2"}, arity=1)
    full = Page.of(["a", "b", "c"], request, lambda item: [item])
    assert full.data == ["a", "b"] and full.has_more
    assert full.next_cursor is not None and decode_cursor("letters", full.next_cursor, 1) == ("b",)
    last = Page.of(["c"], request, lambda item: [item])
    assert last.json(lambda item: {"id": item}) == {
        "object": "list",
        "data": [{"id": "c"}],
        "has_more": False,
        "next_cursor": None,
    }
    assert Page.of([], request, lambda item: [item]).json(dict) == {
        "object": "list",
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }
