"""Keyset pagination with opaque cursors: `?limit=&after=` in, `has_more` and `next_cursor` out.

A cursor is the position of the last item of a page (its sort key), tagged with the list it
belongs to and base64url-encoded; clients only pass it back."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from regio_common.errors import InvalidRequest

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

Item = TypeVar("Item")


@dataclass(frozen=True)
class PageRequest:
    kind: str  # which list the cursor belongs to
    limit: int
    after: tuple[str, ...] | None  # position of the last item already seen

    @property
    def fetch(self) -> int:
        """Rows to read: one more than a page tells whether there is more."""
        return self.limit + 1


def encode_cursor(kind: str, position: Sequence[str]) -> str:
    raw = json.dumps([kind, *position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str, arity: int) -> tuple[str, ...]:
    invalid = InvalidRequest("Invalid value for 'after': not a cursor of this list.", param="after")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != arity + 1
        or decoded[0] != kind
        or not all(isinstance(part, str) for part in decoded)
    ):
        raise invalid
    return tuple(decoded[1:])


def page_request(kind: str, query: Mapping[str, str], arity: int = 2) -> PageRequest:
    text = query.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidRequest(
            f"Invalid value for 'limit': expected an integer from 1 to {MAX_LIMIT}.", param="limit"
        )
    after = query.get("after")
    return PageRequest(
        kind=kind,
        limit=int(text),
        after=decode_cursor(kind, after, arity) if after else None,
    )


def time_position(page: PageRequest) -> tuple[datetime, str] | None:
    """The (created_at, id) position of lists ordered by creation time."""
    if page.after is None:
        return None
    created, item_id = page.after
    try:
        return datetime.fromisoformat(created), item_id
    except ValueError:
        raise InvalidRequest(
            "Invalid value for 'after': not a cursor of this list.", param="after"
        ) from None


@dataclass(frozen=True)
class Page(Generic[Item]):
    data: list[Item]
    has_more: bool
    next_cursor: str | None

    @classmethod
    def of(
        cls, rows: list[Item], page: PageRequest, position: Callable[[Item], Sequence[str]]
    ) -> Page[Item]:
        data = rows[: page.limit]
        has_more = len(rows) > page.limit
        cursor = encode_cursor(page.kind, position(data[-1])) if has_more else None
        return cls(data, has_more, cursor)

    def json(self, render: Callable[[Item], dict[str, Any]]) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [render(item) for item in self.data],
            "has_more": self.has_more,
            "next_cursor": self.next_cursor,
        }
