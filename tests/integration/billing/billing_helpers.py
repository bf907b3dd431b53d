"""Helpers of the billing integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg

from regio.billing.v1 import billing_pb2, billing_pb2_grpc
from regio_billing.app import BillingApp
from regio_billing.ledger import Ledger
from regio_billing.settings import BillingSettings

# Route `liv` of config/catalogue.dev.toml: €0.029 per 1M input tokens = 29 nano-EUR per token,
# €0.049 per 1M output tokens = 49 nano-EUR per token.
LIV_INPUT_NANO_PER_TOKEN = 29
LIV_OUTPUT_NANO_PER_TOKEN = 49


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def fund(stub: Any, account_id: str, amount_nano: int) -> billing_pb2.Balance:
    balance: billing_pb2.Balance = await stub.AddCredits(
        billing_pb2.AddCreditsRequest(
            account_id=account_id,
            amount_nano=amount_nano,
            idempotency_key=new_id("pay"),
            reference="test top-up",
        )
    )
    return balance


async def reserve(
    stub: Any,
    account_id: str,
    transaction_id: str,
    *,
    max_prompt_tokens: int = 100,
    max_completion_tokens: int = 50,
    ttl_seconds: int = 60,
    route: str = "liv",
) -> billing_pb2.ReserveResponse:
    response: billing_pb2.ReserveResponse = await stub.Reserve(
        billing_pb2.ReserveRequest(
            transaction_id=transaction_id,
            account_id=account_id,
            route=route,
            region="eu",
            max_prompt_tokens=max_prompt_tokens,
            max_completion_tokens=max_completion_tokens,
            ttl_seconds=ttl_seconds,
        )
    )
    return response


async def balance_of(stub: Any, account_id: str) -> billing_pb2.Balance:
    balance: billing_pb2.Balance = await stub.GetBalance(
        billing_pb2.GetBalanceRequest(account_id=account_id)
    )
    return balance


async def wait_for(
    condition: Callable[[], Awaitable[bool]], within_seconds: float, what: str
) -> None:
    deadline = time.monotonic() + within_seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_seconds}s: {what}")
        await asyncio.sleep(0.05)


async def query(database_url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the billing tables directly, to check what was really written."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall()


@dataclass
class RunningBilling:
    app: BillingApp
    stub: Any  # BillingAsyncStub: grpc is untyped
    database_url: str

    @property
    def ledger(self) -> Ledger:
        return self.app.ledger


def billing_settings(
    database_url: str, nats_url: str, client_tokens: dict[str, str] | None = None
) -> BillingSettings:
    return BillingSettings(
        database_url=database_url,
        nats_url=nats_url,
        billing_listen_address="127.0.0.1:0",
        hold_sweep_interval_seconds=0.2,
        database_pool_size=12,
        log_level="warning",
        billing_client_tokens=client_tokens or {},
    )


@contextlib.asynccontextmanager
async def running_billing(
    database_url: str, nats_url: str, client_tokens: dict[str, str] | None = None
) -> AsyncIterator[RunningBilling]:
    """A started billing service with a gRPC stub (sending no credentials); the ledger
    invariants must hold at the end. `client_tokens` turns billing's authentication on."""
    # A short pull wait: every stop waits for the pull in progress.
    settings = billing_settings(database_url, nats_url, client_tokens)
    app = BillingApp(settings, usage_fetch_wait_seconds=0.2)
    await app.start()
    channel = grpc.aio.insecure_channel(app.address)
    try:
        yield RunningBilling(app, billing_pb2_grpc.BillingStub(channel), database_url)
        violations = await app.ledger.check_invariants()
    finally:
        await channel.close()
        await app.stop()
    assert violations == []
