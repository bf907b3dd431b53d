"""The dev stack's secrets (issue 9): after real traffic, every log file of the stack is searched
for the keys, tokens, pepper and passwords the stack runs with; and the demo key saved in the
data folder is replaced when the gateway no longer accepts it (e.g. hashed before the pepper)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from regio_devstack.stack import DemoAccount, Stack
from tests.e2e.helpers import wait_until_key_known

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
LOG_WAIT_SECONDS = 10.0


def log_files(stack: Stack) -> dict[str, Path]:
    """Every log of the stack by file name: the services', nats-server's and PostgreSQL's."""
    return {path.name: path for path in sorted(stack.config.data_dir.rglob("*.log"))}


def wait_until_logged(path: Path, text: str) -> None:
    """Services write their logs as they go; a line may land a moment after the response."""
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {path}")
        time.sleep(0.1)


def test_a_full_run_logs_no_secret(stack: Stack, demo: DemoAccount, client: openai.OpenAI) -> None:
    # A completion, a stream, a key guess, dashboard calls with and without the admin token.
    raw = client.chat.completions.with_raw_response.create(
        model="liv", messages=MESSAGES, max_tokens=4
    )
    transaction_id = raw.headers["x-transaction-id"]
    stream = client.chat.completions.create(
        model="liv",
        messages=MESSAGES,
        max_tokens=4,
        stream=True,
    )
    assert [chunk for chunk in stream]
    # A near miss of the real key: a log line quoting what was presented would leak most of it.
    wrong_key = demo.api_key[:-6] + secrets.token_hex(3)
    assert wrong_key != demo.api_key
    wrong = openai.OpenAI(base_url=client.base_url, api_key=wrong_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        wrong.models.list()
    assert refused.value.status_code in (401, 403)
    assert stack.admin("GET", f"/admin/v1/accounts/{demo.account_id}/balance")
    wrong_admin_token = "adm-" + secrets.token_urlsafe(24)
    with pytest.raises(RuntimeError, match=r": 40[13] "):
        stack.admin_as(wrong_admin_token, "GET", "/admin/v1/accounts")

    logs = log_files(stack)
    # The request is in the logs of the gateway and of the worker that served it, so the logs
    # searched below are the ones the traffic above wrote.
    wait_until_logged(logs["gateway.log"], transaction_id)
    assert any(transaction_id in p.read_text() for n, p in logs.items() if n.startswith("worker-"))
    for name in ("billing.log", "dashboard-api.log", "nats-server.log", "pg.log"):
        assert name in logs and logs[name].stat().st_size > 0, name

    forbidden = {
        "demo key": demo.api_key,
        "key guess": wrong_key,
        "admin token": stack.admin_token,
        "wrong admin token": wrong_admin_token,
        "API key pepper": stack.credentials.api_key_pepper,
        **{f"billing token of {c}": t for c, t in stack.credentials.billing_tokens.items()},
        **{f"NATS password of {u}": p for u, p in stack.credentials.nats_passwords.items()},
    }
    leaks = [
        f"{what} in {name}"
        for name, path in logs.items()
        for what, value in forbidden.items()
        if value in path.read_text(errors="replace")
    ]
    assert leaks == []


def test_a_saved_demo_key_the_gateway_refuses_is_replaced(stack: Stack, demo: DemoAccount) -> None:
    saved = stack.config.data_dir / "demo.json"
    refused_key = "rg-" + secrets.token_urlsafe(32)  # as a key hashed without the pepper
    saved.write_text(json.dumps({"account_id": demo.account_id, "api_key": refused_key}))
    replaced = stack.seed_demo()
    assert replaced.account_id == demo.account_id
    assert replaced.api_key != refused_key
    assert json.loads(saved.read_text())["api_key"] == replaced.api_key
    client = openai.OpenAI(
        base_url=stack.gateway_url + "/v1", api_key=replaced.api_key, max_retries=0
    )
    wait_until_key_known(client)
    assert stack.seed_demo() == replaced  # a key the gateway accepts is kept
