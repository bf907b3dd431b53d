"""Bad input gets the documented status and the OpenAI error envelope, never a stack trace."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from regio_devstack.stack import DemoAccount, Stack


def post(
    stack: Stack, body: bytes, key: str | None, host: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        stack.gateway_url + "/v1/chat/completions", data=body, method="POST"
    )
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def assert_envelope(body: dict[str, Any], code: str | None, param: str | None = None) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_wrong_key_is_403_invalid_api_key(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key="rg-wrong", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="liv", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 403
    assert caught.value.code == "invalid_api_key"
    assert caught.value.response.headers["x-transaction-id"].startswith("txn-")


def test_missing_key_is_400(stack: Stack) -> None:
    body = json.dumps({"model": "liv", "messages": [{"role": "user", "content": "x"}]}).encode()
    status, envelope, headers = post(stack, body, key=None)
    assert status == 400
    assert_envelope(envelope, "invalid_value", "Authorization")
    assert headers["x-transaction-id"].startswith("txn-")


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="nonexistent", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_route_not_activated_in_this_region_is_404_region_mismatch(
    stack: Stack, demo: DemoAccount
) -> None:
    body = json.dumps({"model": "liv", "messages": [{"role": "user", "content": "x"}]}).encode()
    status, envelope, _ = post(stack, body, demo.api_key, host="nl.localhost")
    assert status == 404
    assert_envelope(envelope, "region_mismatch", "model")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "liv", "messages": [', "body"),
        (b"[1, 2]", "body"),
        (b'{"model": "liv"}', "messages"),
        (b'{"model": "liv", "messages": "hello"}', "messages"),
        (b'{"model": "liv", "messages": []}', "messages"),
        (b'{"model": "liv", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (
            b'{"model": "liv", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            "max_tokens",
        ),
        (
            b'{"model": "liv", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            "temperature",
        ),
        (b'{"model": "liv", "messages": [{"role": "user", "content": "x"}], "tools": []}', "tools"),
    ],
)
def test_malformed_requests_are_400_with_param(
    stack: Stack, demo: DemoAccount, body: bytes, param: str
) -> None:
    status, envelope, _ = post(stack, body, demo.api_key)
    assert status == 400, envelope
    assert envelope["error"]["param"] == param
    assert_envelope(envelope, envelope["error"]["code"], param)
    assert envelope["error"]["code"] in {"invalid_value", "unsupported_parameter"}


def test_oversized_body_is_400(stack: Stack, demo: DemoAccount) -> None:
    huge = "x" * (21 * 1024 * 1024)  # over the default REGIO_MAX_BODY_BYTES, 20 MiB
    body = json.dumps({"model": "liv", "messages": [{"role": "user", "content": huge}]}).encode()
    status, envelope, _ = post(stack, body, demo.api_key)
    assert status == 400
    assert_envelope(envelope, "invalid_value", "body")


def test_unknown_path_is_404_envelope(stack: Stack) -> None:
    try:
        urllib.request.urlopen(stack.gateway_url + "/v1/nothing-here", timeout=5)
    except urllib.error.HTTPError as error:
        assert error.code == 404
        assert_envelope(json.loads(error.read()), "not_found")
    else:
        raise AssertionError("expected 404")
