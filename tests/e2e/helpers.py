"""Helpers of the e2e tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall

from regio_common.catalogue import Catalogue
from regio_common.settings import DEFAULT_CATALOGUE
from regio_devstack.stack import Stack

E2E_ROUTES = Path(__file__).with_name("catalogue.e2e.toml")


def write_e2e_catalogue(folder: Path) -> Path:
    """The dev catalogue with the e2e routes (scripta, liv-think) appended, as one TOML file.

    Appending TOML tables keeps `liv` and the regions exactly as `make run` serves them."""
    path = folder / "catalogue.e2e.toml"
    path.write_text(DEFAULT_CATALOGUE.read_text() + "\n" + E2E_ROUTES.read_text())
    Catalogue.load(path)  # fail here, not in every service, when the file does not parse
    return path


def wait_until_listed(client: openai.OpenAI, routes: set[str], timeout: float = 5.0) -> None:
    """Until the gateway lists `routes` for the client's key: activations reach it via NATS."""
    deadline = time.monotonic() + timeout
    while not routes <= {model.id for model in client.models.list().data}:
        if time.monotonic() > deadline:
            raise AssertionError(f"{sorted(routes)} not listed after {timeout}s")
        time.sleep(0.05)


def wait_until_key_known(client: openai.OpenAI, timeout: float = 5.0) -> None:
    """Config changes reach the gateway through NATS KV within about a second.

    Each try before then is a failed authentication, which the gateway throttles per client
    address: the pause doubles, so a slow propagation costs a few failures, not a hundred."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        try:
            client.models.list()
            return
        except openai.PermissionDeniedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def settled_balance(stack: Stack, account_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The account's balance once no hold is open (settlement is asynchronous, via JetStream)."""
    deadline = time.monotonic() + timeout
    while True:
        balance: dict[str, Any] = stack.admin("GET", f"/admin/v1/accounts/{account_id}/balance")
        if balance["held_nano"] == 0:
            return balance
        if time.monotonic() > deadline:
            raise AssertionError(f"holds still open after {timeout}s: {balance}")
        time.sleep(0.1)


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    """The message's tool calls, each a function call (Regio makes no other kind)."""
    calls = message.tool_calls or []
    functions = [call for call in calls if isinstance(call, ChatCompletionMessageFunctionToolCall)]
    assert len(functions) == len(calls), calls
    return functions
