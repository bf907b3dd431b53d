"""The admin side: accounts, keys, credits, activations, and their effect on the gateway."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from regio_devstack.stack import Stack
from tests.e2e.helpers import wait_until_key_known


def call(
    stack: Stack,
    method: str,
    path: str,
    body: object = None,
    token: str | None = None,
    authorization: str | None = None,
) -> tuple[int, Any]:
    """One dashboard call as `token` (default: the admin), or with a raw `authorization`
    header value ("" sends none)."""
    header = authorization if authorization is not None else f"Bearer {token or stack.admin_token}"
    request = urllib.request.Request(
        stack.dashboard_url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": header} if header else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_admin_token_is_required(stack: Stack) -> None:
    status, body = call(stack, "GET", "/admin/v1/accounts", token="rg-not-admin")
    assert status == 401
    assert body["error"]["code"] == "invalid_credentials"
    assert body["error"]["type"] == "authentication_error"


def test_account_lifecycle_and_validation(stack: Stack) -> None:
    name = f"acme-{time.monotonic_ns()}"
    status, account = call(stack, "POST", "/admin/v1/accounts", {"name": name})
    assert status == 201 and account["name"] == name
    status, body = call(stack, "POST", "/admin/v1/accounts", {"name": name})
    assert status == 409
    status, body = call(stack, "POST", "/admin/v1/accounts", {"name": ""})
    assert status == 400 and body["error"]["param"] == "name"
    status, body = call(stack, "GET", "/admin/v1/accounts/acct_nope")
    assert status == 404

    base = f"/admin/v1/accounts/{account['id']}"
    status, key = call(stack, "POST", base + "/keys")
    assert status == 201 and key["key"].startswith("rg-") and key["key"].endswith(key["last_four"])

    credit = {"amount_eur": "2.5", "idempotency_key": f"{name}-pay-1"}
    assert call(stack, "POST", base + "/credits", credit)[1]["balance_nano"] == 2_500_000_000
    # Replaying the same payment does not credit twice.
    assert call(stack, "POST", base + "/credits", credit)[1]["balance_nano"] == 2_500_000_000
    reused = {"amount_eur": "3", "idempotency_key": f"{name}-pay-1"}
    status, body = call(stack, "POST", base + "/credits", reused)
    assert status == 409 and body["error"]["param"] == "idempotency_key"
    status, body = call(stack, "POST", base + "/credits", {"amount_eur": "-1"})
    assert status == 400 and body["error"]["param"] == "amount_eur"

    status, body = call(stack, "PUT", base + "/activations/liv/mars", {})
    assert status == 400 and body["error"]["param"] == "region"
    status, body = call(stack, "PUT", base + "/activations/nobody/eu", {})
    assert status == 404
    too_long = {"free_system_prompt": "x" * 1025}
    status, body = call(stack, "PUT", base + "/activations/liv/eu", too_long)
    assert status == 422
    assert body["error"]["param"] == "free_system_prompt"
    assert body["error"]["code"] == "invalid_value"
    assert "1024 characters" in body["error"]["message"]
    status, _ = call(stack, "PUT", base + "/activations/liv/eu", {"free_system_prompt": "x" * 1024})
    assert status == 200
    assert call(stack, "DELETE", base + "/activations/liv/eu")[0] == 200

    status, activation = call(stack, "PUT", base + "/activations/liv/de", {})
    assert status == 200 and activation["region"] == "de"
    status, listed = call(stack, "GET", base + "/activations")
    assert [(a["route"], a["region"]) for a in listed["data"]] == [("liv", "de")]


def test_a_new_key_and_activation_work_at_the_gateway_within_a_second(stack: Stack) -> None:
    name = f"fresh-{time.monotonic_ns()}"
    account = call(stack, "POST", "/admin/v1/accounts", {"name": name})[1]
    base = f"/admin/v1/accounts/{account['id']}"
    key = call(stack, "POST", base + "/keys")[1]["key"]
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=key, max_retries=0)
    started = time.monotonic()
    wait_until_key_known(client, timeout=1.0)
    assert client.models.list().data == []
    call(stack, "PUT", base + "/activations/liv/eu", {})
    deadline = time.monotonic() + 1.0
    while not client.models.list().data:
        assert time.monotonic() < deadline, "activation did not reach the gateway within 1s"
        time.sleep(0.02)
    assert time.monotonic() - started < 2.0
    with pytest.raises(openai.PermissionDeniedError) as caught:
        # No credit yet: the hold is refused.
        client.chat.completions.create(
            model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
    assert caught.value.code == "insufficient_budget"
