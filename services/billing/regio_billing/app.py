"""Wires the billing service together: migrations, pool, ledger, gRPC server, usage consumer
and hold sweeper, all sharing one `BillingMetrics`. `python -m regio_billing` runs it (with the
ops listener, whose readiness checks are defined here); tests run it in-process."""

from __future__ import annotations

from typing import Any

import grpc
import structlog

from regio.billing.v1 import billing_pb2_grpc
from regio_billing.auth_interceptor import BillingAuthInterceptor
from regio_billing.database import BillingPool, migrate, open_pool
from regio_billing.interceptors import DomainErrorInterceptor
from regio_billing.ledger import Ledger
from regio_billing.metrics import BillingMetrics
from regio_billing.service import BillingService
from regio_billing.settings import BillingSettings
from regio_billing.sweeper import HoldSweeper, open_holds_counter
from regio_billing.usage_consumer import UsageConsumer
from regio_common.catalogue import Catalogue
from regio_common.nats_connection import connect_nats
from regio_common.ops_server import NotReady, ReadinessCheck, nats_check, postgres_check

log = structlog.get_logger()

# In-flight RPCs get this long to finish once a stop begins.
SHUTDOWN_GRACE_SECONDS = 5.0
# Longest wait of one JetStream pull; a graceful stop waits for the pull in progress to end.
USAGE_FETCH_WAIT_SECONDS = 1.0
# A readiness `SELECT 1` waits at most this long for a pooled connection.
READY_POOL_WAIT_SECONDS = 1.5


class BillingApp:
    def __init__(
        self,
        settings: BillingSettings,
        usage_fetch_wait_seconds: float = USAGE_FETCH_WAIT_SECONDS,
        metrics: BillingMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or BillingMetrics()
        self._usage_fetch_wait = usage_fetch_wait_seconds
        self._pool: BillingPool | None = None
        self._ledger: Ledger | None = None
        self._nats: Any = None
        self._server: Any = None
        self._consumer: UsageConsumer | None = None
        self._sweeper: HoldSweeper | None = None
        self._address: str | None = None

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("billing is not started")
        return self._ledger

    @property
    def address(self) -> str:
        """The address really listened on (resolves port 0 to the chosen port)."""
        if self._address is None:
            raise RuntimeError("billing is not started")
        return self._address

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        """For the ops listener's /ready: PostgreSQL answers `SELECT 1` through the pool, and
        NATS is connected. Usable before start() (then: not ready)."""
        return {"postgres": self._check_postgres, "nats": self._check_nats}

    async def _check_postgres(self) -> None:
        if self._pool is None:
            raise NotReady("not started")
        await postgres_check(self._pool, READY_POOL_WAIT_SECONDS)()

    async def _check_nats(self) -> None:
        if self._nats is None:
            raise NotReady("not started")
        await nats_check(self._nats)()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # release whatever was opened before the failure
            raise

    async def _start(self) -> None:
        settings = self.settings
        catalogue = Catalogue.load(settings.catalogue_path)
        applied = await migrate(settings.database_url)
        if applied:
            log.info("migrations_applied", versions=applied)
        self._pool = await open_pool(settings.database_url, settings.database_pool_size)
        self._ledger = Ledger(self._pool, catalogue, self.metrics)
        repriced = await self._ledger.publish_catalogue_prices()
        if repriced:
            log.info("route_prices_published", routes=repriced)

        self._nats = await connect_nats(settings.nats_url, name="regio-billing")
        self._consumer = UsageConsumer(
            self._nats.jetstream(),
            self._ledger.settle,
            batch=settings.usage_fetch_batch,
            fetch_wait_seconds=self._usage_fetch_wait,
            linger_seconds=settings.usage_linger_seconds,
            settle_batch=self._ledger.settle_batch,
            metrics=self.metrics,
            stream_replicas=settings.nats_stream_replicas,
        )
        await self._consumer.start()

        self._server = grpc.aio.server(interceptors=self._interceptors())
        billing_pb2_grpc.add_BillingServicer_to_server(
            BillingService(self._ledger, self.metrics), self._server
        )
        port = self._server.add_insecure_port(settings.billing_listen_address)
        if not port:
            raise RuntimeError(f"cannot listen on {settings.billing_listen_address}")
        host = settings.billing_listen_address.rpartition(":")[0]
        self._address = f"{host}:{port}"
        await self._server.start()

        self._sweeper = HoldSweeper(
            self._ledger.sweep_expired_holds,
            settings.hold_sweep_interval_seconds,
            count_open=open_holds_counter(self._pool),
            prune=self._ledger.prune_usage_windows,
            metrics=self.metrics,
        )
        self._sweeper.start()

    def _interceptors(self) -> list[Any]:
        """Domain errors first (outermost), so that calls refused by the credential check are
        counted and timed like every other call."""
        interceptors: list[Any] = [DomainErrorInterceptor(self.metrics)]
        tokens = {
            name: token.get_secret_value()
            for name, token in self.settings.billing_client_tokens.items()
        }
        if tokens:
            interceptors.append(BillingAuthInterceptor(tokens, self.metrics))
            log.info("billing_auth_enabled", clients=sorted(tokens))
        else:
            log.warning(
                "billing_auth_disabled",
                detail="REGIO_BILLING_CLIENT_TOKENS is empty: any caller may use billing's API",
            )
        return interceptors

    async def stop(self) -> None:
        """Stop accepting calls, let in-flight work finish, then close NATS and the pool."""
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE_SECONDS)
            self._server = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._sweeper is not None:
            await self._sweeper.stop()
            self._sweeper = None
        if self._nats is not None:
            await self._nats.close()
            self._nats = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        self._ledger = None
