"""Crashes of real processes during a run of several hundred chat completions.

A stack of its own (the dev catalogue, a real llama.cpp worker on `liv`), so that killing and
restarting its processes never disturbs the session stack the other e2e tests share. Four
clients send small completions, streamed and not, on an account with known credit, while:
1. a worker is killed (kill -9) while it streams an answer; a replacement worker is started;
2. the gateway is killed with two requests in flight after their reserve, one being generated
   by the worker, one not yet accepted by any worker; it is started again on the same port and
   the clients reconnect;
3. billing is killed (kill -9) while it settles usage, and started again;
4. nats-server is killed (kill -9) and started again; PostgreSQL is restarted.
Then the run waits for settlement and for every hold to end (short hold TTL and sweep interval)
and reads PostgreSQL. Printed (`pytest -s`): served, failed by kind, charged, double charges,
lost usage, holds stuck past expiry, and requests charged although no token reached their
client. Asserted: only what must hold whatever the timing, including that a request whose
client received nothing is not charged even when its gateway died while the worker generated
(the worker's reader check, regio_worker/reader_check.py, stops it and bills nothing)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import nats
import psycopg
import pytest

from regio_billing.invariants import find_violations
from regio_common.money import request_cost_nano
from regio_common.settings import DEFAULT_CATALOGUE, PROJECT_ROOT
from regio_common.subjects import BILLING_USAGE_CONSUMER, USAGE_STREAM
from regio_devstack.processes import ManagedProcess, free_port
from regio_devstack.stack import Stack, StackConfig
from tests.integration.billing.billing_helpers import query
from tests.integration.billing.test_billing_crashes import (
    duplicates_absorbed,
    restart_nats,
    restart_postgres,
)

pytestmark = pytest.mark.timeout(300)

# A served request's usage must settle before its hold expires: billing killed -9 gets the
# records it had pulled again only after JetStream's ack wait (30 s), so the TTL leaves room.
HOLD_TTL_SECONDS = 60
# A killed worker's streams end this long after their last chunk (504).
INTER_CHUNK_TIMEOUT_SECONDS = 5
# Time a worker has to accept an offered request (the request's deadline at the worker too).
DISPATCH_TIMEOUT_SECONDS = 3
CLIENTS = 4
MAX_TOKENS = 6
# Served requests between two crashes: each crash is followed by service that works.
SERVED_BETWEEN_CRASHES = 40
CREDIT_EUR = "5"
PHASE_TIMEOUT_SECONDS = 60.0
LONG_ANSWER = "Write a long story about a lighthouse keeper and the sea, in many chapters."
# Long enough that a crash lands mid-generation; short enough that a generation the gateway
# crash orphaned ends (and is billed) well within the hold's TTL, even on a loaded machine.
LONG_MAX_TOKENS = 120


@dataclass
class Attempt:
    """One chat completion as its client saw it."""

    outcome: str = ""  # "served", or what went wrong: "http 503 service_unavailable", ...
    transaction_id: str | None = None  # x-transaction-id, when a response came
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens the client was told
    tokens_received: bool = False  # some generated text reached the client

    @property
    def served(self) -> bool:
        return self.outcome == "served"


@dataclass(frozen=True)
class Customer:
    account_id: str
    api_key: str


@dataclass
class Load:
    """Clients sending completions until stopped; they can be paused so that a crash hits
    exactly one chosen request."""

    http: httpx.AsyncClient
    customer: Customer
    attempts: list[Attempt] = field(default_factory=list)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set: nothing in flight

    def __post_init__(self) -> None:
        self.go.set()
        self.idle.set()

    @property
    def served(self) -> int:
        return sum(attempt.served for attempt in self.attempts)

    async def client(self, number: int) -> None:
        sent = 0
        while not self.stop.is_set():
            await self.go.wait()
            self.in_flight += 1
            self.idle.clear()
            try:
                attempt = await complete(
                    self.http,
                    self.customer,
                    f"Say one word about the number {number * 1000 + sent}.",
                    stream=(number + sent) % 2 == 0,
                    max_tokens=MAX_TOKENS,
                )
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self.idle.set()
            self.attempts.append(attempt)
            sent += 1
            if not attempt.served:
                await asyncio.sleep(0.2)  # a dead gateway refuses at once: no busy loop

    async def pause(self) -> None:
        """Until no request of the load is in flight."""
        self.go.clear()
        await self.idle.wait()

    async def served_more(self, count: int, what: str) -> None:
        target = self.served + count
        deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
        while self.served < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {self.served}/{target} served: {self.failures()}")
            await asyncio.sleep(0.05)

    def failures(self) -> Counter[str]:
        return Counter(attempt.outcome for attempt in self.attempts if not attempt.served)


async def complete(
    http: httpx.AsyncClient,
    customer: Customer,
    prompt: str,
    *,
    stream: bool,
    max_tokens: int,
    first_token: asyncio.Event | None = None,
) -> Attempt:
    """One chat completion, classified; never raises for what a crash can do to it."""
    attempt = Attempt()
    body: dict[str, Any] = {
        "model": "liv",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {customer.api_key}"}
    try:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            attempt.transaction_id = response.headers.get("x-transaction-id")
            if response.status_code != 200:
                error = json.loads(await response.aread()).get("error", {})
                attempt.outcome = f"http {response.status_code} {error.get('code')}"
            elif stream:
                await _read_events(response, attempt, first_token)
            else:
                answer = json.loads(await response.aread())
                attempt.usage = _usage(answer)
                attempt.tokens_received = bool(answer["choices"][0]["message"].get("content"))
                attempt.outcome = "served"
    except httpx.TransportError as error:
        cut = "after tokens" if attempt.tokens_received else "before any token"
        attempt.outcome = f"connection lost {cut} ({type(error).__name__})"
    return attempt


async def _read_events(
    response: httpx.Response, attempt: Attempt, first_token: asyncio.Event | None
) -> None:
    finished = done = False
    error: dict[str, Any] | None = None
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            break
        event = json.loads(line.removeprefix("data: "))
        if "error" in event:
            error = event["error"]
            continue
        for choice in event.get("choices", []):
            if choice["delta"].get("content"):
                attempt.tokens_received = True
                if first_token is not None:
                    first_token.set()
            finished = finished or choice.get("finish_reason") is not None
        if event.get("usage"):
            attempt.usage = _usage(event)
    if error is not None:
        attempt.outcome = f"error event {error.get('code')}"
    elif finished and done and attempt.usage is not None:
        attempt.outcome = "served"
    else:
        attempt.outcome = "stream ended incomplete"


def _usage(answer: dict[str, Any]) -> tuple[int, int]:
    return answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]


# -- the stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("crash-stack")
    running = Stack(
        StackConfig(
            data_dir=data_dir,
            catalogue_path=DEFAULT_CATALOGUE,
            models_dir=PROJECT_ROOT / ".regio" / "models",  # shared: assembling it is slow
            gateway_port=free_port(),
            dashboard_port=free_port(),
            billing_port=free_port(),
            gateway_metrics_port=free_port(),  # its /ready says when keys are loaded again
            extra_env={
                "REGIO_HOLD_TTL_SECONDS": str(HOLD_TTL_SECONDS),
                "REGIO_HOLD_SWEEP_INTERVAL_SECONDS": "0.5",
                "REGIO_INTER_CHUNK_TIMEOUT_SECONDS": str(INTER_CHUNK_TIMEOUT_SECONDS),
                "REGIO_DISPATCH_TIMEOUT_SECONDS": str(DISPATCH_TIMEOUT_SECONDS),
                "REGIO_FIRST_TOKEN_TIMEOUT_SECONDS": "30",
                # Requests racing a restarted gateway's key loading fail authentication.
                "REGIO_AUTH_FAILURES_PER_MINUTE": "1000",
            },
        ),
        say=lambda message: None,
    )
    running.start()
    yield running
    running.stop()


def new_customer(stack: Stack, name: str) -> Customer:
    account_id = stack.admin("POST", "/admin/v1/accounts", {"name": name})["id"]
    key = stack.admin("POST", f"/admin/v1/accounts/{account_id}/keys")["key"]
    stack.admin(
        "POST",
        f"/admin/v1/accounts/{account_id}/credits",
        {"amount_eur": CREDIT_EUR, "idempotency_key": f"{name}-credit"},
    )
    stack.admin("PUT", f"/admin/v1/accounts/{account_id}/activations/liv/eu")
    return Customer(account_id, key)


async def until_key_works(http: httpx.AsyncClient, customer: Customer) -> None:
    """Keys and activations reach the gateway through NATS within about a second."""
    headers = {"Authorization": f"Bearer {customer.api_key}"}
    deadline = time.monotonic() + 10
    while True:
        listed = await http.get("/v1/models", headers=headers)
        if listed.status_code == 200 and "liv" in {m["id"] for m in listed.json()["data"]}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"key not usable: {listed.status_code} {listed.text}")
        await asyncio.sleep(0.1)


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayCrash:
    """The two requests in flight after their reserve when the gateway was killed."""

    generating: Attempt  # its worker was generating the answer
    generating_hold: str  # transaction id (the client never learnt it)
    undispatched: Attempt  # no worker had accepted it
    undispatched_hold: str


@dataclass
class CrashRun:
    load: list[Attempt]
    customers: list[Customer]
    stream_cut_by_worker_crash: Attempt
    gateway_crash: GatewayCrash
    postgres_restarted: bool
    redelivered_already_settled: int
    seconds: float


@pytest.fixture(scope="module")
async def crash_run(crash_stack: Stack) -> AsyncIterator[CrashRun]:
    stack = crash_stack
    started, wall_start = time.monotonic(), datetime.now(UTC)
    loader, prober = (new_customer(stack, name) for name in ("crash-load", "crash-probe"))
    timeout = httpx.Timeout(90.0, connect=5.0)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=timeout) as http:
        for customer in (loader, prober):
            await until_key_works(http, customer)
        load = Load(http, loader)
        clients = [asyncio.create_task(load.client(n)) for n in range(CLIENTS)]
        try:
            await load.served_more(SERVED_BETWEEN_CRASHES, "before any crash")
            worker_cut = await kill_worker_mid_stream(stack, http, prober, load)
            await load.served_more(SERVED_BETWEEN_CRASHES, "after the worker crash")
            gateway_crash = await kill_gateway_after_reserves(stack, http, prober)
            await load.served_more(SERVED_BETWEEN_CRASHES, "after the gateway crash")
            await asyncio.to_thread(stack.crash_and_restart, "billing")
            await load.served_more(SERVED_BETWEEN_CRASHES, "after the billing crash")
            assert stack.nats is not None and stack.postgres is not None
            await asyncio.to_thread(restart_nats, stack.nats)
            await load.served_more(SERVED_BETWEEN_CRASHES, "after the nats-server crash")
            await asyncio.to_thread(restart_postgres, stack.postgres)
            await load.served_more(SERVED_BETWEEN_CRASHES, "after the PostgreSQL restart")
        finally:
            load.stop.set()
            load.go.set()
            await asyncio.gather(*clients)
    customers = [loader, prober]
    await until_every_hold_ended(stack, load.attempts, customers)
    await until_usage_consumed(stack)
    restarted = await query(
        stack.database_url, "SELECT pg_postmaster_start_time() > %s", wall_start
    )
    yield CrashRun(
        load=load.attempts,
        customers=customers,
        stream_cut_by_worker_crash=worker_cut,
        gateway_crash=gateway_crash,
        postgres_restarted=restarted == [(True,)],
        redelivered_already_settled=duplicates_absorbed(stack.logs_dir / "billing.log"),
        seconds=time.monotonic() - started,
    )


async def kill_worker_mid_stream(
    stack: Stack, http: httpx.AsyncClient, prober: Customer, load: Load
) -> Attempt:
    """kill -9 of the only worker while it streams a long answer and nothing else: a request
    of the load that has just been answered could lose its usage record with the worker (it is
    published after the last chunk), which is not the crash under test. Then a replacement
    worker; the load goes on meanwhile (503s until the replacement serves)."""
    worker = next(p for p in stack.services if p.name.startswith("worker-"))
    await load.pause()
    first_token = asyncio.Event()
    probe = asyncio.create_task(
        complete(
            http,
            prober,
            LONG_ANSWER,
            stream=True,
            max_tokens=LONG_MAX_TOKENS,
            first_token=first_token,
        )
    )
    await asyncio.wait_for(first_token.wait(), PHASE_TIMEOUT_SECONDS)
    worker.kill()
    load.go.set()
    replacement = await asyncio.to_thread(start_replacement_worker, stack)
    assert replacement.running()
    return await probe


def start_replacement_worker(stack: Stack) -> ManagedProcess:
    worker = stack.start_worker("liv", stack.config.worker_country)
    stack.wait_for_worker(worker, "liv", stack.config.worker_country)
    return worker


async def kill_gateway_after_reserves(
    stack: Stack, http: httpx.AsyncClient, prober: Customer
) -> GatewayCrash:
    """kill -9 of the gateway with two requests in flight after their reserve, then the gateway
    again on its port. One is being generated by its worker (a JSON answer: nothing reaches
    the client before the end). No worker has accepted the other: the worker is frozen
    (SIGSTOP) while the gateway offers it, and thawed only after the offer's deadline, so that
    it refuses it; its hold can only end by expiring."""
    worker = [p for p in stack.services if p.name.startswith("worker-")][-1]
    assert worker.pid is not None
    generating = asyncio.create_task(
        complete(http, prober, LONG_ANSWER, stream=False, max_tokens=LONG_MAX_TOKENS)
    )
    generating_hold = await _open_hold_of(stack, prober.account_id)
    await _until(
        lambda: _generating(worker.log_path, generating_hold), "the worker generates the probe"
    )
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        undispatched = asyncio.create_task(
            complete(http, prober, "Hi", stream=False, max_tokens=MAX_TOKENS)
        )
        undispatched_hold = await _open_hold_of(stack, prober.account_id, besides=generating_hold)
        thaw_at = time.monotonic() + DISPATCH_TIMEOUT_SECONDS + 1
        await asyncio.to_thread(stack.crash_and_restart, "gateway")
        await asyncio.sleep(max(0.0, thaw_at - time.monotonic()))
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    return GatewayCrash(await generating, generating_hold, await undispatched, undispatched_hold)


async def _open_hold_of(stack: Stack, account_id: str, besides: str = "") -> str:
    deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
    while True:
        rows = await query(
            stack.database_url,
            "SELECT transaction_id FROM billing.holds"
            " WHERE account_id = %s AND status = 'open' AND transaction_id <> %s",
            account_id,
            besides,
        )
        if rows:
            transaction: str = rows[0][0]
            return transaction
        if time.monotonic() > deadline:
            raise AssertionError("the probe's hold was never taken")
        await asyncio.sleep(0.01)


def _generating(worker_log: Path, transaction: str) -> bool:
    return any(
        '"generation_started"' in line and transaction in line
        for line in worker_log.read_text(errors="replace").splitlines()
    )


async def _until(
    condition: Callable[[], bool], what: str, within: float = PHASE_TIMEOUT_SECONDS
) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.02)


async def until_every_hold_ended(
    stack: Stack, attempts: list[Attempt], customers: list[Customer]
) -> None:
    """Until served usage is settled and no hold of the run is open: settled, released by the
    gateway, or swept after its expiry."""
    served = [a.transaction_id for a in attempts if a.served]
    accounts = [customer.account_id for customer in customers]
    deadline = time.monotonic() + HOLD_TTL_SECONDS + 45
    while True:
        (settled,) = (
            await query(
                stack.database_url,
                "SELECT count(*) FROM billing.settlements WHERE transaction_id = ANY(%s)",
                served,
            )
        )[0]
        (open_holds,) = (
            await query(
                stack.database_url,
                "SELECT count(*) FROM billing.holds WHERE account_id = ANY(%s) AND status = 'open'",
                accounts,
            )
        )[0]
        if settled == len(served) and open_holds == 0:
            return
        if time.monotonic() > deadline:
            return  # what is still missing is counted, and fails the test
        await asyncio.sleep(0.5)


async def until_usage_consumed(stack: Stack) -> None:
    """Until billing's consumer has no record pending or unacked: nothing can settle later."""
    client = await nats.connect(stack.nats_url_for("ops"))
    try:
        js = client.jetstream()
        deadline = time.monotonic() + 45
        while True:
            info = await js.consumer_info(USAGE_STREAM, BILLING_USAGE_CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"usage records left unsettled: {info}")
            await asyncio.sleep(0.5)
    finally:
        await client.close()


# -- what the ledger says ----------------------------------------------------------------------


class Hold(NamedTuple):
    account_id: str
    status: str
    release_reason: str | None
    input_price_nano: int
    output_price_nano: int
    expires_at: datetime


@dataclass
class LedgerView:
    """The run's holds and settlements, by transaction id."""

    holds: dict[str, Hold]
    charged: dict[str, int]  # settled transactions: charged nano-EUR (0: nothing)
    charge_entries: Counter[str]  # journal charge entries per transaction id
    balances: dict[str, tuple[int, int]]  # account: balance, held
    credit: dict[str, int]  # account: nano-EUR paid in
    violations: list[str]
    now: datetime

    def price(self, transaction: str, usage: tuple[int, int]) -> int:
        hold = self.holds[transaction]
        return request_cost_nano(*usage, hold.input_price_nano, hold.output_price_nano)

    def spent(self, account_id: str) -> int:
        return sum(
            self.charged.get(transaction, 0)
            for transaction, hold in self.holds.items()
            if hold.account_id == account_id
        )


async def read_ledger(stack: Stack, customers: list[Customer]) -> LedgerView:
    accounts = [customer.account_id for customer in customers]
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        holds = await conn.execute(
            "SELECT transaction_id, account_id, status, release_reason, input_price_nano,"
            " output_price_nano,"
            " expires_at"
            " FROM billing.holds WHERE account_id = ANY(%s)",
            (accounts,),
        )
        settlements = await conn.execute(
            "SELECT transaction_id, charged_nano FROM billing.settlements"
            " WHERE account_id = ANY(%s)",
            (accounts,),
        )
        entries = await conn.execute(
            "SELECT reference_key, count(*) FROM billing.journal WHERE kind = 'charge'"
            " GROUP BY reference_key"
        )
        balances = await conn.execute(
            "SELECT account_id, balance_nano, held_nano FROM billing.accounts"
            " WHERE account_id = ANY(%s)",
            (accounts,),
        )
        credit = await conn.execute(
            "SELECT account_id, sum(amount_nano) FROM billing.payments"
            " WHERE account_id = ANY(%s) GROUP BY account_id",
            (accounts,),
        )
        now = await conn.execute("SELECT now()")
        view = LedgerView(
            holds={row[0]: Hold(*row[1:]) for row in await holds.fetchall()},
            charged=dict(await settlements.fetchall()),
            charge_entries=Counter(dict(await entries.fetchall())),
            balances={row[0]: (row[1], row[2]) for row in await balances.fetchall()},
            credit={row[0]: int(row[1]) for row in await credit.fetchall()},
            violations=[],
            now=(await now.fetchone() or (datetime.now(UTC),))[0],
        )
    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
        view.violations = await find_violations(conn)
    return view


@dataclass
class Counts:
    served: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    charged: int = 0  # transactions with a charge
    double_charges: int = 0
    lost_usage: list[str] = field(default_factory=list)  # served, not charged its price
    stuck_holds: list[str] = field(default_factory=list)  # open past expiry
    # (transaction, what its client saw): charged although no token reached the client
    charged_without_any_token: list[tuple[str, str]] = field(default_factory=list)
    # cut after some text reached the client, and not charged at all
    partial_answers_free: list[str] = field(default_factory=list)


def count(run: CrashRun, view: LedgerView) -> Counts:
    crash = run.gateway_crash
    attempts = [*run.load, run.stream_cut_by_worker_crash, crash.generating, crash.undispatched]
    counts = Counts(served=sum(a.served for a in attempts))
    counts.failed = Counter(a.outcome for a in attempts if not a.served)
    counts.charged = sum(1 for amount in view.charged.values() if amount > 0)
    counts.double_charges = sum(1 for n in view.charge_entries.values() if n > 1)
    for attempt in attempts:
        transaction = attempt.transaction_id
        if attempt.served:
            assert transaction is not None and attempt.usage is not None
            if view.charged.get(transaction) != view.price(transaction, attempt.usage):
                counts.lost_usage.append(transaction)
        elif transaction and attempt.tokens_received and not view.charged.get(transaction):
            counts.partial_answers_free.append(transaction)
    counts.stuck_holds = [
        transaction
        for transaction, hold in view.holds.items()
        if hold.status == "open" and hold.expires_at < view.now
    ]
    # Every hold of the run is a request; a client whose connection the gateway crash cut
    # never learnt its transaction id, and got no token.
    known = {a.transaction_id: a for a in attempts if a.transaction_id is not None}
    for transaction in view.holds:
        seen = known.get(transaction)
        if seen is not None and (seen.served or seen.tokens_received):
            continue
        if view.charged.get(transaction, 0) > 0:
            saw = seen.outcome if seen is not None else "no response: the gateway was killed"
            counts.charged_without_any_token.append((transaction, saw))
    return counts


@pytest.fixture(scope="module")
async def outcome(crash_run: CrashRun, crash_stack: Stack) -> tuple[CrashRun, LedgerView, Counts]:
    view = await read_ledger(crash_stack, crash_run.customers)
    counts = count(crash_run, view)
    print(
        f"\nplatform crash run ({crash_run.seconds:.0f} s; worker, gateway and billing killed"
        f" -9, nats-server killed -9 and restarted, PostgreSQL restarted):"
        f" {counts.served + sum(counts.failed.values())} requests, {counts.served} served,"
        f" failed by kind {dict(counts.failed)}; {counts.charged} charged,"
        f" {counts.double_charges} double charges, {len(counts.lost_usage)} lost usage,"
        f" {len(counts.stuck_holds)} holds stuck past expiry,"
        f" {len(counts.charged_without_any_token)} charged although no token reached the"
        f" client {counts.charged_without_any_token},"
        f" {len(counts.partial_answers_free)} answers cut after some text and not charged,"
        f" {crash_run.redelivered_already_settled} redelivered records found already settled,"
        f" invariants {'ok' if not view.violations else view.violations}"
    )
    return crash_run, view, counts


def test_crashes_lose_no_usage_double_nothing_and_leave_no_hold(
    outcome: tuple[CrashRun, LedgerView, Counts],
) -> None:
    run, view, counts = outcome
    # Every crash hit what it aimed at, and service came back after each one.
    cut_stream, crash = run.stream_cut_by_worker_crash, run.gateway_crash
    assert cut_stream.tokens_received and cut_stream.outcome == "error event timeout"
    assert crash.generating.outcome.startswith("connection lost before any token")
    assert crash.undispatched.outcome.startswith("connection lost before any token")
    assert run.postgres_restarted
    assert counts.served >= 6 * SERVED_BETWEEN_CRASHES
    # Each served request charged once, at the price of the usage its client was told.
    assert counts.lost_usage == []
    assert counts.double_charges == 0
    # No hold outlives its expiry: the one no worker accepted was swept, uncharged.
    assert counts.stuck_holds == []
    assert [t for t, hold in view.holds.items() if hold.status == "open"] == []
    assert view.holds[crash.undispatched_hold].release_reason == "expired"
    assert crash.undispatched_hold not in view.charged
    # Ledger: I1-I8 (postings sum to zero, balance = sum of postings, ...), and each account
    # holds its credit minus exactly what its requests were charged.
    assert view.violations == []
    assert view.balances == {
        customer.account_id: (view.credit[customer.account_id] - view.spent(customer.account_id), 0)
        for customer in run.customers
    }


def test_a_request_that_failed_before_any_token_is_not_charged(
    outcome: tuple[CrashRun, LedgerView, Counts],
) -> None:
    run, view, counts = outcome
    assert view.charged.get(run.gateway_crash.generating_hold, 0) == 0
    assert counts.charged_without_any_token == []
