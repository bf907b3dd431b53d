"""`make bench-billing`: reserve latency and settlement throughput of the billing service.

Real parts only: nats-server with JetStream and PostgreSQL (fsync on) in a temporary folder,
and billing as its own process (`python -m regio_billing`), driven over gRPC and JetStream.

(a) Reserve latency: thousands of gRPC Reserve calls at concurrency 1 and 32, spread over
    many funded accounts; p50 and p99 as the gateway would see them. Measured without usage
    limits (the common path) and with limits on the key and the account that never refuse
    (every limit checked and counted in the reserve's transaction).
(b) Settlements per second: holds are created up front, billing is stopped, one usage record
    per hold is published to JetStream, billing is started again and the settlements table is
    polled until every hold is settled. Rate = records settled / time from the first to the
    last settlement seen. Run with a pull of 1 record (one transaction per record, the
    reference) and with the default batch (one transaction per pull), and once more with
    holds that track usage limits (settlement also updates the usage windows).
Options (`--help`) shorten the run: fewer calls and records, or no settlement part.
Afterwards every run checks the ledger: the invariants I1-I8, one settlement per hold, and the
charges equal the price formula for the reported tokens."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import psycopg

from regio.billing.v1 import billing_pb2, billing_pb2_grpc
from regio.inference.v1 import inference_pb2
from regio_billing.invariants import find_violations
from regio_billing.settings import BillingSettings
from regio_common.logging import configure_logging
from regio_common.money import NANO_PER_EUR, request_cost_nano
from regio_common.subjects import usage_subject
from regio_common.usage_stream import ensure_usage_stream
from regio_devstack.bench_overhead import process_tree_cpu
from regio_devstack.processes import ManagedProcess, free_port, port_open
from regio_devstack.servers import NatsServer, PostgresServer

ROUTE = "liv"
ACCOUNTS = 200
MAX_PROMPT_TOKENS = 100
MAX_COMPLETION_TOKENS = 200
# What each usage record reports (less than reserved, as a real request would).
PROMPT_TOKENS = 80
COMPLETION_TOKENS = 150
RESERVE_LEVELS = [(1, 3000), (32, 6400)]  # (concurrency, measured calls)
RESERVE_WARMUP = 200
TARGET_SETTLEMENTS_PER_SECOND = 5000
TARGET_RESERVE_P99_MS = 5.0
PUBLISH_IN_FLIGHT = 500
LARGE_BATCH = 256
SETTLE_RECORDS = 30000
LABEL_WIDTH = 58  # of the report's first column
# Limits that admit every bench request, so that the with-limits figures measure the cost of
# checking and counting them, not refusals.
NEVER_REFUSING = billing_pb2.UsageLimits(
    requests_per_minute=4_000_000_000,
    tokens_per_minute=4_000_000_000,
    max_concurrent_requests=4_000_000_000,
    daily_spend_cap_nano=10**18,
    monthly_spend_cap_nano=10**18,
)


@dataclass(frozen=True)
class SettleRun:
    label: str
    batch: int
    records: int
    limits: bool = False  # holds that track usage limits


@dataclass(frozen=True)
class BenchOptions:
    reserve_calls: int | None  # per concurrency level; None: the defaults of RESERVE_LEVELS
    settle_records: int
    settlement: bool

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> BenchOptions:
        parser = argparse.ArgumentParser(
            prog="python -m regio_devstack.bench_billing",
            description="Reserve latency (with and without usage limits) and settlements/s of "
            "the billing service, against real PostgreSQL and JetStream.",
        )
        parser.add_argument(
            "--reserve-calls",
            type=int,
            default=None,
            help="measured Reserve calls per concurrency level and limits setting "
            f"(default: {', '.join(f'{calls} at {c}' for c, calls in RESERVE_LEVELS)})",
        )
        parser.add_argument(
            "--settle-records",
            type=int,
            default=SETTLE_RECORDS,
            help="usage records per batched settlement run; the pull-of-1 reference settles "
            f"a tenth (default: {SETTLE_RECORDS})",
        )
        parser.add_argument(
            "--no-settlement", action="store_true", help="measure Reserve latency only"
        )
        args = parser.parse_args(argv)
        return cls(args.reserve_calls, args.settle_records, not args.no_settlement)

    def reserve_levels(self) -> list[tuple[int, int]]:
        if self.reserve_calls is None:
            return RESERVE_LEVELS
        return [(concurrency, self.reserve_calls) for concurrency, _ in RESERVE_LEVELS]


def default_batch() -> int:
    return BillingSettings.model_fields["usage_fetch_batch"].default  # type: ignore[no-any-return]


class BillingProcess:
    """`python -m regio_billing` against the given servers, on a free port."""

    def __init__(self, folder: Path, database_url: str, nats_url: str, **env: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            "billing",
            [sys.executable, "-m", "regio_billing"],
            folder / "billing.log",
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("REGIO_")},
                "REGIO_DATABASE_URL": database_url,
                "REGIO_NATS_URL": nats_url,
                "REGIO_BILLING_LISTEN_ADDRESS": self.address,
                "REGIO_BILLING_METRICS_PORT": "0",  # no ops listener: several may run at once
                **env,
            },
        )

    def start(self) -> BillingProcess:
        self.process.start()
        self.process.wait_until(lambda: port_open("127.0.0.1", self.port), 60, "gRPC port")
        return self

    def stop(self) -> None:
        """Graceful: finishes the batch in progress and acks it."""
        self.process.stop()

    def kill(self) -> None:
        """kill -9: no chance to commit, ack or clean up."""
        if self.process.process is not None and self.process.running():
            self.process.process.send_signal(signal.SIGKILL)
            self.process.process.wait(timeout=10)


# -- helpers shared by the measurements --------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


async def fund_accounts(stub: Any, prefix: str, count: int, eur: int) -> list[str]:
    accounts = [f"{prefix}-{n}" for n in range(count)]
    await asyncio.gather(
        *(
            stub.AddCredits(
                billing_pb2.AddCreditsRequest(
                    account_id=account,
                    amount_nano=eur * NANO_PER_EUR,
                    idempotency_key=f"pay-{account}",
                    reference="bench",
                )
            )
            for account in accounts
        )
    )
    return accounts


async def route_prices(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    cursor = await conn.execute(
        "SELECT input_price_nano, output_price_nano FROM billing.route_prices WHERE route = %s"
        " ORDER BY valid_from DESC, id DESC LIMIT 1",
        (ROUTE,),
    )
    row = await cursor.fetchone()
    assert row is not None, "billing published no price for the route"
    return row[0], row[1]


async def create_holds(
    database_url: str, accounts: list[str], count: int, limits: bool = False
) -> list[str]:
    """`count` open holds spread over `accounts`, written like Reserve writes them (hold rows
    plus each account's cached held amount, in one transaction): a faster setup than RPCs.
    With `limits`, the holds track usage limits of one key per account."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        input_price, output_price = await route_prices(conn)
        amount = request_cost_nano(
            MAX_PROMPT_TOKENS, MAX_COMPLETION_TOKENS, input_price, output_price
        )
        transactions = [f"bench-{uuid.uuid4().hex}" for _ in range(count)]
        owners = [accounts[n % len(accounts)] for n in range(count)]
        held: dict[str, int] = {}
        for owner in owners:
            held[owner] = held.get(owner, 0) + amount
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO billing.holds (transaction_id, account_id, route, region,"
                " amount_nano, input_price_nano, output_price_nano, expires_at, key_id,"
                " tracks_limits, max_prompt_tokens, max_completion_tokens)"
                " SELECT t, a, %s, 'eu', %s, %s, %s, now() + interval '1 hour', 'key-' || a,"
                " %s, %s, %s FROM unnest(%s::text[], %s::text[]) AS v(t, a)",
                (
                    ROUTE,
                    amount,
                    input_price,
                    output_price,
                    limits,
                    MAX_PROMPT_TOKENS,
                    MAX_COMPLETION_TOKENS,
                    transactions,
                    owners,
                ),
            )
            await conn.execute(
                "UPDATE billing.accounts AS a SET held_nano = a.held_nano + v.amount"
                " FROM unnest(%s::text[], %s::bigint[]) AS v(account_id, amount)"
                " WHERE a.account_id = v.account_id",
                (list(held), list(held.values())),
            )
    return transactions


def usage_record(transaction_id: str, account_id: str) -> bytes:
    return inference_pb2.UsageRecord(
        transaction_id=transaction_id,
        account_id=account_id,
        route=ROUTE,
        region="eu",
        country="de",
        worker_id="bench",
        prompt_tokens=PROMPT_TOKENS,
        completion_tokens=COMPLETION_TOKENS,
        finish_reason=inference_pb2.FINISH_REASON_STOP,
        billable=True,
        finished_unix_ms=int(time.time() * 1000),
    ).SerializeToString()


async def publish_usage(nats_url: str, records: list[tuple[str, bytes]]) -> None:
    """Publish like workers do (Nats-Msg-Id = transaction id), many in flight at once."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        await ensure_usage_stream(js)
        for start in range(0, len(records), PUBLISH_IN_FLIGHT):
            await asyncio.gather(
                *(
                    js.publish(usage_subject(ROUTE), payload, headers={"Nats-Msg-Id": message_id})
                    for message_id, payload in records[start : start + PUBLISH_IN_FLIGHT]
                )
            )
    finally:
        await client.close()


async def count_settled(conn: psycopg.AsyncConnection[Any]) -> int:
    cursor = await conn.execute("SELECT count(*) FROM billing.settlements")
    row = await cursor.fetchone()
    assert row is not None
    count: int = row[0]
    return count


async def journal_position(conn: psycopg.AsyncConnection[Any]) -> int:
    """The journal's id sequence: every bench settlement posts one charge entry, so its advance
    counts settlements. Read in O(1), where polling count(*) would cost PostgreSQL a core."""
    cursor = await conn.execute("SELECT last_value, is_called FROM billing.journal_id_seq")
    row = await cursor.fetchone()
    assert row is not None
    position: int = row[0] if row[1] else row[0] - 1
    return position


async def ledger_problems(database_url: str, transactions: list[str], expected: int) -> list[str]:
    """Invariant violations, plus any hold not settled exactly once at the exact price."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        problems = await find_violations(conn)
        cursor = await conn.execute(
            "SELECT count(*), count(DISTINCT s.transaction_id),"
            " count(*) FILTER (WHERE s.charged_nano <> %s),"
            " count(*) FILTER (WHERE h.status <> 'settled')"
            " FROM unnest(%s::text[]) AS t(transaction_id)"
            " LEFT JOIN billing.settlements s USING (transaction_id)"
            " LEFT JOIN billing.holds h USING (transaction_id)",
            (expected, transactions),
        )
        row = await cursor.fetchone()
        assert row is not None
        rows, settled, wrong_price, not_closed = row
        if settled != len(transactions) or rows != len(transactions):
            problems.append(f"{len(transactions) - settled} holds unsettled of {len(transactions)}")
        if wrong_price:
            problems.append(f"{wrong_price} settlements not charged the exact price")
        if not_closed:
            problems.append(f"{not_closed} holds not closed as settled")
    return problems


# -- (a) reserve latency ------------------------------------------------------------------------
async def reserve_latencies(
    stub: Any, accounts: list[str], concurrency: int, calls: int, limits: bool = False
) -> list[float]:
    counter = iter(range(calls + RESERVE_WARMUP))
    latencies: list[float] = []

    async def client() -> None:
        for n in counter:
            account = accounts[n % len(accounts)]
            request = billing_pb2.ReserveRequest(
                transaction_id=f"lat-{uuid.uuid4().hex}",
                account_id=account,
                route=ROUTE,
                region="eu",
                max_prompt_tokens=MAX_PROMPT_TOKENS,
                max_completion_tokens=MAX_COMPLETION_TOKENS,
                ttl_seconds=3600,
                key_id=f"key-{account}",
            )
            if limits:
                request.key_limits.CopyFrom(NEVER_REFUSING)
                request.account_limits.CopyFrom(NEVER_REFUSING)
            started = time.perf_counter()
            response = await stub.Reserve(request)
            elapsed = time.perf_counter() - started
            if response.outcome != billing_pb2.RESERVE_OUTCOME_HELD:
                raise RuntimeError(f"reserve refused: {response}")
            if n >= RESERVE_WARMUP:
                latencies.append(elapsed)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


# -- (b) settlements per second -----------------------------------------------------------------
@dataclass
class SettleMeasurement:
    run: SettleRun
    per_second: float
    problems: list[str]
    # CPU time per settlement (user + system, µs) of the billing process and of PostgreSQL.
    billing_cpu_us: float
    postgres_cpu_us: float


async def measure_settlement(
    folder: Path,
    postgres: PostgresServer,
    nats_url: str,
    run: SettleRun,
    say: Callable[[str], None],
) -> SettleMeasurement:
    database_url = postgres.create_database(f"bench_{uuid.uuid4().hex[:10]}")
    env = {"REGIO_USAGE_FETCH_BATCH": str(run.batch), "REGIO_LOG_LEVEL": "info"}
    billing = BillingProcess(folder / f"settle-{run.batch}", database_url, nats_url, **env).start()
    try:
        accounts = await _with_stub(
            billing, lambda stub: fund_accounts(stub, "settle", ACCOUNTS, 100)
        )
        transactions = await create_holds(database_url, accounts, run.records, run.limits)
        billing.stop()  # records pile up in the stream, then are consumed at full speed
        owners = {t: accounts[n % len(accounts)] for n, t in enumerate(transactions)}
        say(f"  publishing {run.records} usage records ...")
        await publish_usage(nats_url, [(t, usage_record(t, owners[t])) for t in transactions])
        say(f"  settling them with batch {run.batch} ...")
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            start = await journal_position(conn)
            billing.start()
            first_seen, first_count = await _first_settlements(conn, start)
            cpu_before = _cpu(billing, postgres)
            while (await journal_position(conn)) - start < run.records:
                if time.perf_counter() - first_seen > 600:
                    raise RuntimeError(f"not all of {run.records} settled in 600 s")
                await asyncio.sleep(0.005)
            last_seen = time.perf_counter()
            cpu_after = _cpu(billing, postgres)
            while await count_settled(conn) < run.records:  # (a rolled back batch took ids)
                if time.perf_counter() - first_seen > 600:
                    raise RuntimeError(f"not all of {run.records} settled in 600 s")
                await asyncio.sleep(0.1)
        measured = run.records - first_count
        per_second = measured / (last_seen - first_seen)
        billing_cpu, postgres_cpu = (
            (after - before) / measured * 1e6
            for before, after in zip(cpu_before, cpu_after, strict=True)
        )
        input_price, output_price = await _prices(database_url)
        expected = request_cost_nano(PROMPT_TOKENS, COMPLETION_TOKENS, input_price, output_price)
        problems = await ledger_problems(database_url, transactions, expected)
    finally:
        billing.stop()
    return SettleMeasurement(run, per_second, problems, billing_cpu, postgres_cpu)


def _cpu(billing: BillingProcess, postgres: PostgresServer) -> tuple[float, float]:
    assert billing.process.pid is not None and postgres.process is not None
    assert postgres.process.pid is not None
    return process_tree_cpu(billing.process.pid), process_tree_cpu(postgres.process.pid)


async def _first_settlements(conn: psycopg.AsyncConnection[Any], start: int) -> tuple[float, int]:
    deadline = time.perf_counter() + 120
    while (count := await journal_position(conn) - start) == 0:
        if time.perf_counter() > deadline:
            raise RuntimeError("billing settled nothing within 120 s")
        await asyncio.sleep(0.002)
    return time.perf_counter(), count


async def _prices(database_url: str) -> tuple[int, int]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        return await route_prices(conn)


async def _with_stub(billing: BillingProcess, use: Callable[[Any], Awaitable[Any]]) -> Any:
    async with grpc.aio.insecure_channel(billing.address) as channel:
        return await use(billing_pb2_grpc.BillingStub(channel))


# -- the run ------------------------------------------------------------------------------------
async def run_bench(folder: Path, say: Callable[[str], None], options: BenchOptions) -> str:
    nats_server = NatsServer(folder / "nats").start()
    postgres = PostgresServer(folder / "pg" / "data").start()
    try:
        say("reserve latency ...")
        database_url = postgres.create_database("bench_reserve")
        billing = BillingProcess(folder / "reserve", database_url, nats_server.url).start()
        latency: dict[tuple[int, bool], list[float]] = {}
        try:
            async with grpc.aio.insecure_channel(billing.address) as channel:
                stub = billing_pb2_grpc.BillingStub(channel)
                accounts = await fund_accounts(stub, "reserve", ACCOUNTS, 100)
                for limits in (False, True):
                    for concurrency, calls in options.reserve_levels():
                        latency[(concurrency, limits)] = await reserve_latencies(
                            stub, accounts, concurrency, calls, limits
                        )
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                reserve_problems = await find_violations(conn)
        finally:
            billing.stop()
        batch = default_batch()
        records = options.settle_records
        runs = [
            SettleRun("pull of 1 (reference)", 1, max(1, records // 10)),
            SettleRun(f"batch of {batch} (default)", batch, records),
            SettleRun(f"batch of {LARGE_BATCH}", LARGE_BATCH, records),
            SettleRun(f"batch of {batch}, holds with limits", batch, records, limits=True),
        ]
        measurements = []
        for run in runs if options.settlement else []:
            say(f"settlements/s, {run.label} ...")
            measurements.append(
                await measure_settlement(folder, postgres, nats_server.url, run, say)
            )
    finally:
        postgres.stop()
        nats_server.stop()
    return table(latency, reserve_problems, measurements)


def table_row(label: str, value: str, target: str = "", ok: bool | None = None) -> str:
    mark = "" if ok is None else ("ok" if ok else "MISS")
    return f"{label:<{LABEL_WIDTH}}{value:>12}{target:>12}{mark:>6}"


def settlement_rows(measurements: list[SettleMeasurement]) -> list[str]:
    lines: list[str] = []

    def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
        lines.append(table_row(label, value, target, ok))

    old = measurements[0]
    for m in measurements:
        target_applies = m is not old
        row(
            f"settlements/s, {m.run.label}",
            f"{m.per_second:.0f}",
            f">= {TARGET_SETTLEMENTS_PER_SECOND}" if target_applies else "",
            m.per_second >= TARGET_SETTLEMENTS_PER_SECOND if target_applies else None,
        )
    for m in measurements[1:]:
        row(f"ratio {m.run.label} / reference", f"x{m.per_second / old.per_second:.1f}")
    for m in measurements:
        row(f"CPU µs/settlement, {m.run.label}: billing", f"{m.billing_cpu_us:.0f}")
        row(f"CPU µs/settlement, {m.run.label}: PostgreSQL", f"{m.postgres_cpu_us:.0f}")
    return lines


def table(
    latency: dict[tuple[int, bool], list[float]],
    reserve_problems: list[str],
    measurements: list[SettleMeasurement],
) -> str:
    lines = [
        f"{'metric':<{LABEL_WIDTH}}{'measured':>12}{'target':>12}{'':>6}",
        "-" * (LABEL_WIDTH + 30),
    ]

    def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
        lines.append(table_row(label, value, target, ok))

    for (concurrency, limits), values in latency.items():
        p50, p99 = percentile(values, 50) * 1000, percentile(values, 99) * 1000
        label = f"Reserve{' with limits' if limits else ''}"
        row(f"{label} p50 ms, concurrency {concurrency} ({len(values)} calls)", f"{p50:.2f}")
        target_applies = concurrency == 1
        row(
            f"{label} p99 ms, concurrency {concurrency}",
            f"{p99:.2f}",
            f"< {TARGET_RESERVE_P99_MS:g}" if target_applies else "",
            p99 < TARGET_RESERVE_P99_MS if target_applies else None,
        )
        if concurrency > 1:
            throughput = concurrency / statistics.mean(values)
            row(f"{label} calls/s, concurrency {concurrency}", f"{throughput:.0f}")
    problems = reserve_problems + [p for m in measurements for p in m.problems]
    if measurements:
        lines.extend(settlement_rows(measurements))
    row("ledger check (I1-I8, exactly once, exact price)", "ok" if not problems else "FAILED")
    lines += [f"  ! {problem}" for problem in problems]
    return "\n".join(lines)


def main() -> None:
    options = BenchOptions.parse()
    configure_logging("bench", "warning", "console")
    print(
        f"billing bench: {os.cpu_count()} cores, PostgreSQL with fsync on, route {ROUTE},"
        f" {ACCOUNTS} accounts; load average {os.getloadavg()[0]:.1f}"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="regio-bench-billing-") as folder:
        report = asyncio.run(run_bench(Path(folder), say=print, options=options))
    print()
    print(report)
    print(
        f"total bench time {time.monotonic() - started:.0f}s;"
        f" load average {os.getloadavg()[0]:.1f} (other work on the machine skews the figures)"
    )


if __name__ == "__main__":
    main()
