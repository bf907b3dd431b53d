"""The whole platform, started once for the e2e session on free ports in a temporary folder:
real nats-server, PostgreSQL, billing, dashboard-api, the gateway, and a worker per route of
tests/e2e/catalogue.e2e.toml: llama.cpp on the real GGUF for `liv` and `liv-think`, a scripted
worker for `scripta`. Tests drive it with the official `openai` SDK and plain HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from regio_common.settings import PROJECT_ROOT
from regio_devstack.processes import free_port
from regio_devstack.stack import DemoAccount, Stack, StackConfig
from tests.e2e.helpers import wait_until_key_known, wait_until_listed, write_e2e_catalogue


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack")
    # Share the assembled model between runs: assembling it is the slow part of a first start.
    models_dir = PROJECT_ROOT / ".regio" / "models"
    running = Stack(
        StackConfig(
            data_dir=data_dir,
            catalogue_path=write_e2e_catalogue(data_dir),
            models_dir=models_dir,
            gateway_port=free_port(),
            dashboard_port=free_port(),
            billing_port=free_port(),
            gateway_metrics_port=free_port(),
            billing_metrics_port=free_port(),
            dashboard_metrics_port=free_port(),
            worker_metrics_port=free_port(),
            # Every test calls from 127.0.0.1, and many send bad keys on purpose: the session's
            # gateway must not throttle them all for a minute. Throttling is tested on a
            # gateway of its own.
            extra_env={"REGIO_AUTH_FAILURES_PER_MINUTE": "1000"},
            route_engines={"scripta": "scripted"},
            # One generation at a time: a small KV cache, and little CPU taken from liv.
            route_worker_env={"liv-think": {"REGIO_WORKER_SLOTS": "1"}},
        ),
        say=lambda message: None,
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def demo(stack: Stack) -> DemoAccount:
    return stack.seed_demo()


@pytest.fixture(scope="session")
def client(stack: Stack, demo: DemoAccount) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=demo.api_key, max_retries=0)


@dataclass(frozen=True)
class Customer:
    account_id: str
    api_key: str
    client: openai.OpenAI


@pytest.fixture
def new_customer(stack: Stack) -> Any:
    """Factory: a fresh account with a key, some credit and chosen activations (`routes` in
    `regions`, each with the dashboard settings `activation`, e.g. {"thinking": {...}})."""

    def make(
        credit_eur: str = "1",
        regions: tuple[str, ...] = ("eu",),
        routes: tuple[str, ...] = ("liv",),
        activation: dict[str, Any] | None = None,
    ) -> Customer:
        name = f"customer-{time.monotonic_ns()}"
        account_id = stack.admin("POST", "/admin/v1/accounts", {"name": name})["id"]
        key = stack.admin("POST", f"/admin/v1/accounts/{account_id}/keys")["key"]
        stack.admin(
            "POST",
            f"/admin/v1/accounts/{account_id}/credits",
            {"amount_eur": credit_eur, "idempotency_key": f"{name}-credit"},
        )
        for route in routes:
            for region in regions:
                stack.admin(
                    "PUT",
                    f"/admin/v1/accounts/{account_id}/activations/{route}/{region}",
                    activation or {},
                )
        client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=key, max_retries=0)
        wait_until_key_known(client)
        if "eu" in regions:  # the region of 127.0.0.1: its activations are listed there
            wait_until_listed(client, set(routes))
        return Customer(account_id, key, client)

    return make
