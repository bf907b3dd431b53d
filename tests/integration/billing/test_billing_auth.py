"""Billing's gRPC credentials on the real server: a bearer token per client, and the gateway
limited to moving holds and reading balances."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog

from regio.billing.v1 import billing_pb2
from regio_common.billing_rpc import BillingRpcClient
from regio_devstack.servers import NatsServer
from tests.integration.billing.billing_helpers import RunningBilling, new_id, running_billing

GATEWAY_TOKEN = "gateway-token-5b1e0c7d9a"
DASHBOARD_TOKEN = "dashboard-token-f00dfeed42"


class Client(BillingRpcClient):
    """The shared client (it sends the token), with the calls these tests make."""

    async def balance(self, account_id: str) -> billing_pb2.Balance:
        balance: billing_pb2.Balance = await self._stub.GetBalance(
            billing_pb2.GetBalanceRequest(account_id=account_id),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return balance

    async def add_credits(self, account_id: str) -> billing_pb2.Balance:
        balance: billing_pb2.Balance = await self._stub.AddCredits(
            billing_pb2.AddCreditsRequest(
                account_id=account_id,
                amount_nano=1_000,
                idempotency_key=new_id("pay"),
                reference="auth test",
            ),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return balance


@pytest.fixture
async def guarded_billing(
    fresh_database_url: str, nats_server: NatsServer
) -> AsyncIterator[RunningBilling]:
    tokens = {"gateway": GATEWAY_TOKEN, "dashboard": DASHBOARD_TOKEN}
    async with running_billing(fresh_database_url, nats_server.url, tokens) as running:
        yield running


@pytest.fixture
async def client_with() -> AsyncIterator[Any]:
    clients: list[Client] = []

    def make(billing: RunningBilling, token: str) -> Client:
        client = Client(billing.app.address, timeout_seconds=5.0, token=token)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def refusals(billing: RunningBilling, reason: str, client: str) -> float:
    value = billing.app.metrics.registry.get_sample_value(
        "regio_billing_auth_refusals_total", {"reason": reason, "client": client}
    )
    return value or 0.0


async def test_a_call_without_a_valid_token_is_unauthenticated(
    guarded_billing: RunningBilling, client_with: Any
) -> None:
    account = new_id("acct")
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(grpc.aio.AioRpcError) as without_token:
            await guarded_billing.stub.GetBalance(billing_pb2.GetBalanceRequest(account_id=account))
        with pytest.raises(grpc.aio.AioRpcError) as wrong_token:
            await client_with(guarded_billing, GATEWAY_TOKEN + "x").balance(account)

    for refused in (without_token.value, wrong_token.value):
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.details() == "missing or invalid billing credentials"
    assert refusals(guarded_billing, "unauthenticated", "unknown") == 2
    assert [entry["event"] for entry in logs].count("billing_call_unauthenticated") == 2
    assert GATEWAY_TOKEN not in repr(logs)


async def test_the_gateway_may_only_hold_settle_and_read(
    guarded_billing: RunningBilling, client_with: Any
) -> None:
    gateway = client_with(guarded_billing, GATEWAY_TOKEN)
    account = new_id("acct")

    balance = await gateway.balance(account)
    with pytest.raises(grpc.aio.AioRpcError) as forbidden:
        await gateway.add_credits(account)

    assert balance.balance_nano == 0
    assert forbidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refusals(guarded_billing, "permission_denied", "gateway") == 1
    assert (await gateway.balance(account)).balance_nano == 0  # nothing was credited


async def test_the_dashboard_may_call_everything(
    guarded_billing: RunningBilling, client_with: Any
) -> None:
    dashboard = client_with(guarded_billing, DASHBOARD_TOKEN)
    account = new_id("acct")

    credited = await dashboard.add_credits(account)

    assert credited.balance_nano == 1_000
    assert (await dashboard.balance(account)).balance_nano == 1_000


async def test_without_tokens_billing_answers_anyone(
    fresh_database_url: str, nats_server: NatsServer
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with running_billing(fresh_database_url, nats_server.url) as billing:
            balance = await billing.stub.AddCredits(
                billing_pb2.AddCreditsRequest(
                    account_id=new_id("acct"), amount_nano=1_000, idempotency_key=new_id("pay")
                )
            )

    assert balance.balance_nano == 1_000
    assert "billing_auth_disabled" in [entry["event"] for entry in logs]
