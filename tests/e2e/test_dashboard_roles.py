"""Roles of the dashboard: the admin token, account-owner management tokens, and what each may
reach (401 without a valid credential, 403 for a role that may not, 404 for another account)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import openai
import pytest

from regio_devstack.stack import Stack
from tests.e2e.test_dashboard_api import call


@dataclass(frozen=True)
class Owner:
    account_id: str
    token: str
    key_id: str
    api_key: str


def new_owner(stack: Stack) -> Owner:
    """A fresh account with an API key and an owner management token."""
    name = f"own-{time.monotonic_ns()}"
    account_id = call(stack, "POST", "/admin/v1/accounts", {"name": name})[1]["id"]
    base = f"/admin/v1/accounts/{account_id}"
    key = call(stack, "POST", base + "/keys")[1]
    status, token = call(stack, "POST", base + "/management-tokens")
    assert status == 201
    return Owner(account_id, token["token"], key["id"], key["key"])


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer two words", "Bearer rgm-unknown"],
)
def test_missing_malformed_or_unknown_credentials_answer_401(
    stack: Stack, authorization: str
) -> None:
    status, body = call(stack, "GET", "/admin/v1/accounts", authorization=authorization)
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == "invalid_credentials"


def test_management_tokens_and_api_keys_are_not_interchangeable(stack: Stack) -> None:
    owner = new_owner(stack)
    assert owner.token.startswith("rgm-") and not owner.api_key.startswith("rgm-")
    # An inference key is no management credential...
    status, body = call(stack, "GET", f"/admin/v1/accounts/{owner.account_id}", token=owner.api_key)
    assert status == 401 and body["error"]["code"] == "invalid_credentials"
    # ...and a management token is no inference key.
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=owner.token, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"


def test_a_management_token_is_shown_once_and_can_be_revoked(stack: Stack) -> None:
    owner = new_owner(stack)
    base = f"/admin/v1/accounts/{owner.account_id}"
    assert call(stack, "GET", base, token=owner.token)[0] == 200
    status, listed = call(stack, "GET", base + "/management-tokens")
    assert status == 200 and len(listed["data"]) == 1
    listed_token = listed["data"][0]
    assert "token" not in listed_token and owner.token not in str(listed)
    assert owner.token.startswith(listed_token["prefix"])
    assert owner.token.endswith(listed_token["last_four"])

    status, revoked = call(stack, "DELETE", base + f"/management-tokens/{listed_token['id']}")
    assert status == 200 and revoked["status"] == "revoked" and revoked["revoked"] is not None
    status, body = call(stack, "GET", base, token=owner.token)
    assert status == 401 and body["error"]["code"] == "invalid_credentials"


def test_an_owner_manages_their_own_account(stack: Stack) -> None:
    owner = new_owner(stack)
    base = f"/admin/v1/accounts/{owner.account_id}"
    status, account = call(stack, "GET", base, token=owner.token)
    assert status == 200 and account["id"] == owner.account_id
    status, key = call(stack, "POST", base + "/keys", token=owner.token)
    assert status == 201 and key["key"].startswith("rg-")
    status, keys = call(stack, "GET", base + "/keys", token=owner.token)
    assert status == 200 and {k["id"] for k in keys["data"]} == {owner.key_id, key["id"]}
    status, _ = call(stack, "DELETE", base + f"/keys/{key['id']}", token=owner.token)
    assert status == 200
    status, _ = call(stack, "PUT", base + "/activations/liv/de", {}, token=owner.token)
    assert status == 200
    status, activations = call(stack, "GET", base + "/activations", token=owner.token)
    assert [(a["route"], a["region"]) for a in activations["data"]] == [("liv", "de")]
    status, balance = call(stack, "GET", base + "/balance", token=owner.token)
    assert status == 200 and balance["balance_nano"] == 0


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("POST", "", {"name": "made-by-an-owner"}),
        ("POST", "/suspend", None),
        ("POST", "/unsuspend", None),
        ("POST", "/credits", {"amount_eur": "5"}),
        ("POST", "/management-tokens", None),
        ("GET", "/management-tokens", None),
    ],
)
def test_admin_operations_answer_403_to_an_owner(
    stack: Stack, method: str, suffix: str, body: object
) -> None:
    owner = new_owner(stack)
    path = "/admin/v1/accounts" + (f"/{owner.account_id}{suffix}" if suffix else "")
    status, answer = call(stack, method, path, body, token=owner.token)
    assert status == 403
    assert answer["error"]["type"] == "permission_error"
    assert answer["error"]["code"] == "permission_denied"
    # Nothing happened: no credit, not suspended.
    assert call(stack, "GET", f"/admin/v1/accounts/{owner.account_id}")[1]["status"] == "active"
    balance = call(stack, "GET", f"/admin/v1/accounts/{owner.account_id}/balance")[1]
    assert balance["balance_nano"] == 0


def test_an_owner_cannot_see_or_touch_another_account(stack: Stack) -> None:
    mine, theirs = new_owner(stack), new_owner(stack)
    other = f"/admin/v1/accounts/{theirs.account_id}"
    attempts: list[tuple[str, str, object]] = [
        ("GET", other, None),
        ("GET", other + "/keys", None),
        ("POST", other + "/keys", None),
        ("DELETE", other + f"/keys/{theirs.key_id}", None),
        ("GET", other + "/activations", None),
        ("PUT", other + "/activations/liv/eu", {}),
        ("DELETE", other + "/activations/liv/eu", None),
        ("GET", other + "/balance", None),
        # Another account's key id under one's own account is unknown too.
        ("DELETE", f"/admin/v1/accounts/{mine.account_id}/keys/{theirs.key_id}", None),
    ]
    for method, path, body in attempts:
        status, answer = call(stack, method, path, body, token=mine.token)
        assert (status, answer["error"]["code"]) == (404, "not_found"), (method, path)
    # The other account is untouched: its one key is live and it has no activation.
    keys = call(stack, "GET", other + "/keys")[1]["data"]
    assert [(k["id"], k["status"]) for k in keys] == [(theirs.key_id, "active")]
    assert call(stack, "GET", other + "/activations")[1]["data"] == []
    # And its own token still reaches it.
    assert call(stack, "GET", other, token=theirs.token)[0] == 200
