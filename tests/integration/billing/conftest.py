"""Billing running in-process against the session's real PostgreSQL and nats-server, with the
generated gRPC stub as its client. Every scenario ends with the ledger invariants checked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from regio_billing.database import migrate, open_pool
from regio_billing.ledger import Ledger
from regio_billing.settings import BillingSettings
from regio_common.catalogue import Catalogue
from regio_devstack.servers import NatsServer
from tests.integration.billing.billing_helpers import (
    RunningBilling,
    running_billing,
)


@pytest.fixture
async def billing(
    fresh_database_url: str, nats_server: NatsServer
) -> AsyncIterator[RunningBilling]:
    async with running_billing(fresh_database_url, nats_server.url) as running:
        yield running


@pytest.fixture
async def ledger(fresh_database_url: str) -> AsyncIterator[Ledger]:
    """The ledger alone (no gRPC, no NATS, no sweeper), for tests that drive it directly."""
    await migrate(fresh_database_url)
    pool = await open_pool(fresh_database_url, max_size=4)
    try:
        ledger = Ledger(pool, Catalogue.load(BillingSettings().catalogue_path))
        await ledger.publish_catalogue_prices()
        yield ledger
    finally:
        await pool.close()


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[Any]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()
