"""Lists of the dashboard are paged with opaque cursors: `?limit=&after=`."""

from __future__ import annotations

import time
from typing import Any

import pytest

from regio_devstack.stack import Stack
from tests.e2e.test_dashboard_api import call


def walk(stack: Stack, path: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Every item of a paged list, and the number of pages it took."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        separator = "&" if "?" in path else "?"
        query = f"{separator}limit={limit}" + (f"&after={cursor}" if cursor else "")
        status, page = call(stack, "GET", path + query)
        assert status == 200
        assert set(page) == {"object", "data", "has_more", "next_cursor"}
        assert page["object"] == "list" and len(page["data"]) <= limit
        items += page["data"]
        pages += 1
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return items, pages
        assert isinstance(page["next_cursor"], str)
        cursor = page["next_cursor"]


def new_account(stack: Stack) -> str:
    account_id: str = call(
        stack, "POST", "/admin/v1/accounts", {"name": f"l-{time.monotonic_ns()}"}
    )[1]["id"]
    return account_id


def test_keys_are_listed_page_by_page_without_secrets(stack: Stack) -> None:
    base = f"/admin/v1/accounts/{new_account(stack)}"
    created = [call(stack, "POST", base + "/keys")[1] for _ in range(5)]
    call(stack, "DELETE", base + f"/keys/{created[1]['id']}")

    listed, pages = walk(stack, base + "/keys", limit=2)
    assert pages == 3
    assert [k["id"] for k in listed] == [k["id"] for k in created]  # oldest first
    for key, issued in zip(listed, created, strict=True):
        assert set(key) == {
            "id", "object", "account_id", "prefix", "last_four", "activations", "status",
            "created", "revoked", "limits",
        }  # fmt: skip
        assert issued["key"].startswith(key["prefix"]) and issued["key"].endswith(key["last_four"])
        assert issued["key"] not in str(listed)
    assert [k["status"] for k in listed] == ["active", "revoked", "active", "active", "active"]
    assert listed[1]["revoked"] is not None and listed[0]["revoked"] is None

    first = call(stack, "GET", base + "/keys?limit=5")[1]
    assert len(first["data"]) == 5 and first["has_more"] is False and first["next_cursor"] is None


def test_accounts_and_activations_are_paged(stack: Stack) -> None:
    mine = {new_account(stack) for _ in range(3)}
    accounts, _ = walk(stack, "/admin/v1/accounts", limit=2)
    ids = [a["id"] for a in accounts]
    assert len(ids) == len(set(ids)) and mine <= set(ids)
    everything = call(stack, "GET", "/admin/v1/accounts?limit=100")[1]["data"]
    assert len(everything) < 100 and [a["id"] for a in everything] == ids

    base = f"/admin/v1/accounts/{next(iter(mine))}"
    for region in ("nl", "eu", "de"):
        call(stack, "PUT", base + f"/activations/liv/{region}", {})
    activations, pages = walk(stack, base + "/activations", limit=1)
    assert pages == 3
    assert [a["region"] for a in activations] == ["de", "eu", "nl"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("after=not-a-cursor", "after"),
        ("after=WyJrZXlzIl0", "after"),  # base64 JSON, but not a cursor of this list
    ],
)
def test_bad_paging_parameters_are_400(stack: Stack, query: str, param: str) -> None:
    status, body = call(stack, "GET", "/admin/v1/accounts?" + query)
    assert status == 400
    assert body["error"]["code"] == "invalid_value" and body["error"]["param"] == param


def test_a_cursor_of_one_list_is_refused_by_another(stack: Stack) -> None:
    base = f"/admin/v1/accounts/{new_account(stack)}"
    for _ in range(2):
        call(stack, "POST", base + "/keys")
    cursor = call(stack, "GET", base + "/keys?limit=1")[1]["next_cursor"]
    status, body = call(stack, "GET", base + f"/activations?after={cursor}")
    assert status == 400 and body["error"]["param"] == "after"
    status, body = call(stack, "GET", f"/admin/v1/accounts?after={cursor}")
    assert status == 400 and body["error"]["param"] == "after"
