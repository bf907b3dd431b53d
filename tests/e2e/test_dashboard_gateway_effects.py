"""Dashboard changes that gateways must honour within a second: key revocation, account
suspension, activation cancellation. Driven through the gateway with the openai SDK."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from regio_devstack.stack import Stack
from tests.e2e.conftest import Customer
from tests.e2e.helpers import wait_until_key_known
from tests.e2e.test_dashboard_api import call

PROPAGATION_SECONDS = 1.0


def seconds_until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """How long `condition` took to hold (fails after `timeout`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition never held"
        time.sleep(0.02)
    return time.monotonic() - started


def refused(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.PermissionDeniedError as error:
        assert error.code == "invalid_api_key"
        return True
    return False


def chat(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(
        model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )


def test_a_revoked_key_is_refused_at_the_gateway_within_a_second(
    stack: Stack, new_customer: Callable[..., Customer]
) -> None:
    customer = new_customer()
    base = f"/admin/v1/accounts/{customer.account_id}"
    assert chat(customer.client).usage is not None  # the key works
    key_id = call(stack, "GET", base + "/keys")[1]["data"][0]["id"]

    status, revoked = call(stack, "DELETE", base + f"/keys/{key_id}")
    assert status == 200 and revoked["status"] == "revoked" and "key" not in revoked
    assert seconds_until(lambda: refused(customer.client)) < PROPAGATION_SECONDS
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(customer.client)
    assert caught.value.code == "invalid_api_key"
    # Revoking again changes nothing; an unknown key id is a 404.
    assert call(stack, "DELETE", base + f"/keys/{key_id}")[1]["revoked"] == revoked["revoked"]
    assert call(stack, "DELETE", base + "/keys/key_nope")[0] == 404


def test_suspension_stops_every_key_of_the_account_and_unsuspension_restores_them(
    stack: Stack, new_customer: Callable[..., Customer]
) -> None:
    customer = new_customer()
    base = f"/admin/v1/accounts/{customer.account_id}"
    second = call(stack, "POST", base + "/keys")[1]
    second_client = openai.OpenAI(
        base_url=stack.gateway_url + "/v1", api_key=second["key"], max_retries=0
    )
    wait_until_key_known(second_client)

    status, account = call(stack, "POST", base + "/suspend")
    assert status == 200 and account["status"] == "suspended"
    assert seconds_until(lambda: refused(customer.client)) < PROPAGATION_SECONDS
    assert refused(second_client)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(customer.client)
    assert caught.value.code == "invalid_api_key"
    assert call(stack, "GET", base)[1]["status"] == "suspended"

    # A key revoked while suspended stays revoked after unsuspension.
    call(stack, "DELETE", base + f"/keys/{second['id']}")
    status, account = call(stack, "POST", base + "/unsuspend")
    assert status == 200 and account["status"] == "active"
    assert seconds_until(lambda: not refused(customer.client)) < PROPAGATION_SECONDS
    assert chat(customer.client).usage is not None
    time.sleep(0.2)
    assert refused(second_client)


def test_a_cancelled_activation_is_no_longer_served(
    stack: Stack, new_customer: Callable[..., Customer]
) -> None:
    customer = new_customer(regions=("eu",))
    base = f"/admin/v1/accounts/{customer.account_id}"
    assert [m.id for m in customer.client.models.list().data] == ["liv"]

    status, cancelled = call(stack, "DELETE", base + "/activations/liv/eu")
    assert status == 200 and cancelled["deleted"] is True
    waited = seconds_until(lambda: not customer.client.models.list().data)
    assert waited < PROPAGATION_SECONDS
    with pytest.raises(openai.NotFoundError) as caught:
        chat(customer.client)
    assert caught.value.code == "model_not_found"
    assert call(stack, "GET", base + "/activations")[1]["data"] == []
    status, body = call(stack, "DELETE", base + "/activations/liv/eu")
    assert status == 404 and body["error"]["code"] == "not_found"
