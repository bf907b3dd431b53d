"""Helpers of the e2e tests."""

from __future__ import annotations

import time
from typing import Any

import openai

from regio_devstack.stack import Stack


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
