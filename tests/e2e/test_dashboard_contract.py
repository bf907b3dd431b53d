"""The dashboard's contract beyond CRUD: idempotent creation, thinking settings projected to
the gateways' config bucket, keys scoped to activations (enforced by the gateway), and audited
manual credit adjustments."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import nats
import openai
import pytest

from regio_common.config_records import ActivationRecord
from regio_common.subjects import CONFIG_BUCKET, activation_kv_key
from regio_devstack.stack import Stack
from tests.e2e.conftest import Customer
from tests.e2e.helpers import wait_until_key_known
from tests.e2e.test_dashboard_api import call


def post(
    stack: Stack, path: str, body: object, key: str, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    """A POST with an Idempotency-Key; returns status, body and headers."""
    request = urllib.request.Request(
        stack.dashboard_url + path,
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token or stack.admin_token}", "Idempotency-Key": key},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def new_account(stack: Stack) -> str:
    account_id: str = call(stack, "POST", "/admin/v1/accounts", {"name": unique("acct")})[1]["id"]
    return account_id


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


# -- idempotency ----------------------------------------------------------------------------------
def test_a_retried_account_creation_answers_the_first_response(stack: Stack) -> None:
    key, body = unique("idem"), {"name": unique("idem-acct")}
    first = post(stack, "/admin/v1/accounts", body, key)
    again = post(stack, "/admin/v1/accounts", body, key)
    assert first[0] == again[0] == 201
    assert again[1] == first[1]  # the same account, not a 409 for its name
    assert again[2].get("Idempotent-Replayed") == "true"
    listed = call(stack, "GET", f"/admin/v1/accounts?name={body['name']}")[1]["data"]
    assert [a["id"] for a in listed] == [first[1]["id"]]

    status, error, _ = post(stack, "/admin/v1/accounts", {"name": unique("other")}, key)
    assert status == 422 and error["error"]["code"] == "idempotency_key_reused"


def test_a_retried_key_creation_never_shows_the_secret_again(stack: Stack) -> None:
    account_id, key = new_account(stack), unique("idem-key")
    path = f"/admin/v1/accounts/{account_id}/keys"
    status, created, _ = post(stack, path, {}, key)
    assert status == 201 and created["key"].startswith("rg-")
    status, replay, _ = post(stack, path, {}, key)
    assert status == 409 and replay["error"]["code"] == "idempotency_key_reused"
    assert created["id"] in replay["error"]["message"]
    assert created["key"] not in json.dumps(replay)
    assert len(call(stack, "GET", path)[1]["data"]) == 1  # one key, not two


def test_a_retried_payment_credits_once_and_the_key_is_per_caller(stack: Stack) -> None:
    account_id, key = new_account(stack), unique("idem-pay")
    path = f"/admin/v1/accounts/{account_id}/credits"
    assert post(stack, path, {"amount_eur": "2"}, key)[1]["balance_nano"] == 2_000_000_000
    assert post(stack, path, {"amount_eur": "2"}, key)[1]["balance_nano"] == 2_000_000_000
    assert call(stack, "GET", f"/admin/v1/accounts/{account_id}/balance")[1]["balance_eur"] == "2"
    # The same key from another caller (the owner) is another key: no replay of the admin's.
    token = call(stack, "POST", f"/admin/v1/accounts/{account_id}/management-tokens")[1]["token"]
    status, created, _ = post(stack, f"/admin/v1/accounts/{account_id}/keys", {}, key, token)
    assert status == 201 and created["key"].startswith("rg-")


# -- thinking settings ----------------------------------------------------------------------------
def kv_activation(stack: Stack, account_id: str, route: str, region: str) -> ActivationRecord:
    async def read() -> bytes:
        nc = await nats.connect(stack.nats_url_for("ops"))
        try:
            kv = await nc.jetstream().key_value(CONFIG_BUCKET)
            entry = await kv.get(activation_kv_key(account_id, route, region))
            assert entry.value is not None
            return entry.value
        finally:
            await nc.close()

    return ActivationRecord.model_validate_json(asyncio.run(read()))


def test_thinking_settings_are_stored_and_projected_to_the_gateways(stack: Stack) -> None:
    account_id = new_account(stack)
    path = f"/admin/v1/accounts/{account_id}/activations/liv/eu"
    status, activation = call(stack, "PUT", path, {})
    assert status == 200
    assert activation["thinking"] == {
        "default_effort": "medium",
        "reasoning_output": "reasoning_content",
    }
    thinking = {"default_effort": "high", "reasoning_output": "think_tags"}
    status, activation = call(
        stack, "PUT", path, {"free_system_prompt": "Be brief.", "thinking": thinking}
    )
    assert status == 200 and activation["thinking"] == thinking
    listed = call(stack, "GET", f"/admin/v1/accounts/{account_id}/activations")[1]["data"]
    assert listed[0]["thinking"] == thinking
    record = kv_activation(stack, account_id, "liv", "eu")
    assert record.thinking.default_effort == "high"
    assert record.thinking.reasoning_output == "think_tags"
    assert record.free_system_prompt == "Be brief."

    status, error = call(stack, "PUT", path, {"thinking": {"default_effort": "extreme"}})
    assert status == 400 and error["error"]["param"] == "thinking.default_effort"
    status, error = call(stack, "PUT", path, {"free_system_prompt": "x" * 1025})
    assert status == 422 and "1024 characters" in error["error"]["message"]


# -- keys scoped to activations -------------------------------------------------------------------
def test_a_scoped_key_is_refused_outside_its_activations_at_the_gateway(
    stack: Stack, new_customer: Callable[..., Customer]
) -> None:
    customer = new_customer(regions=("eu", "de"))
    base = f"/admin/v1/accounts/{customer.account_id}"
    status, scoped = call(stack, "POST", base + "/keys", {"activations": ["liv/de"]})
    assert status == 201 and scoped["activations"] == ["liv/de"]
    listed = {k["id"]: k for k in call(stack, "GET", base + "/keys")[1]["data"]}
    assert listed[scoped["id"]]["activations"] == ["liv/de"]

    eu = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=scoped["key"], max_retries=0)
    de = eu.with_options(default_headers={"Host": "de.localhost"})
    wait_until_key_known(eu)
    assert [m.id for m in de.models.list().data] == ["liv"]
    assert eu.models.list().data == []
    # The account's unscoped key still sees liv in eu.
    assert [m.id for m in customer.client.models.list().data] == ["liv"]
    with pytest.raises(openai.NotFoundError) as caught:
        eu.chat.completions.create(
            model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert caught.value.code == "region_mismatch"
    answer = de.chat.completions.create(
        model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert answer.usage is not None

    status, error = call(stack, "POST", base + "/keys", {"activations": ["liv/mars"]})
    assert status == 422 and error["error"]["param"] == "activations[0]"
    status, error = call(stack, "POST", base + "/keys", {"activations": ["no-slash"]})
    assert status == 400


# -- audited adjustments --------------------------------------------------------------------------
def test_adjustments_are_audited_and_never_overdraw(stack: Stack) -> None:
    account_id = new_account(stack)
    base = f"/admin/v1/accounts/{account_id}"
    status, added = call(
        stack, "POST", base + "/adjustments", {"amount_eur": "3", "reason": "goodwill #12"}
    )
    assert status == 201 and added["balance"]["balance_eur"] == "3"
    entry = added["audit_entry"]
    assert (entry["actor"], entry["reason"], entry["outcome"]) == (
        "admin",
        "goodwill #12",
        "applied",
    )
    assert entry["amount_nano"] == 3_000_000_000

    too_much = {"amount_eur": "-5", "reason": "chargeback"}
    status, error = call(stack, "POST", base + "/adjustments", too_much)
    assert status == 409 and error["error"]["code"] == "insufficient_credit"
    assert call(stack, "GET", base + "/balance")[1]["balance_eur"] == "3"

    status, taken = call(
        stack, "POST", base + "/adjustments", {"amount_eur": "-1.5", "reason": "chargeback"}
    )
    assert status == 201 and taken["balance"]["balance_eur"] == "1.5"

    status, error = call(stack, "POST", base + "/adjustments", {"amount_eur": "1"})
    assert status == 400 and error["error"]["param"] == "reason"

    entries = call(stack, "GET", f"/admin/v1/audit?account_id={account_id}")[1]["data"]
    assert [(e["amount_eur"], e["outcome"]) for e in entries] == [
        ("3", "applied"),
        ("-5", "refused"),
        ("-1.5", "applied"),
    ]
    assert all(e["actor"] == "admin" and e["created"] > 0 for e in entries)
    page = call(stack, "GET", f"/admin/v1/audit?account_id={account_id}&limit=2")[1]
    assert page["has_more"] is True and len(page["data"]) == 2
    after = page["next_cursor"]
    rest = call(stack, "GET", f"/admin/v1/audit?account_id={account_id}&after={after}")[1]
    assert [e["amount_eur"] for e in rest["data"]] == ["-1.5"]

    # Owners neither adjust nor read the audit log.
    token = call(stack, "POST", base + "/management-tokens")[1]["token"]
    grant = {"amount_eur": "100", "reason": "me"}
    assert call(stack, "POST", base + "/adjustments", grant, token=token)[0] == 403
    assert call(stack, "GET", "/admin/v1/audit", token=token)[0] == 403


def test_nul_characters_are_a_400_not_a_server_error(stack: Stack) -> None:
    # PostgreSQL text cannot hold NUL: found by the schemathesis run as a 500.
    status, error = call(stack, "GET", "/admin/v1/audit?account_id=a%00b")
    assert status == 400 and error["error"]["param"] == "account_id"
    status, error = call(stack, "GET", "/admin/v1/accounts/acct%00x")
    assert status == 400 and error["error"]["param"] == "account_id"
    account_id = new_account(stack)
    path = f"/admin/v1/accounts/{account_id}/activations/liv/eu"
    status, error = call(stack, "PUT", path, {"free_system_prompt": "a\u0000b"})
    assert status == 400 and error["error"]["param"] == "free_system_prompt"
