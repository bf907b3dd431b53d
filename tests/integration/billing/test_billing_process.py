"""`python -m regio_billing` as a real process: configured by REGIO_ variables, serves gRPC,
and stops cleanly (exit 0) on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from regio.billing.v1 import billing_pb2, billing_pb2_grpc
from regio_devstack.processes import free_port
from regio_devstack.servers import NatsServer


async def wait_until_serving(stub: Any, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert process.returncode is None, "billing exited during start"
        try:
            await stub.GetBalance(billing_pb2.GetBalanceRequest(account_id="probe"), timeout=1)
            return
        except grpc.aio.AioRpcError:
            assert time.monotonic() < deadline, "billing did not answer within 20s"
            await asyncio.sleep(0.1)


async def test_billing_runs_as_a_process_and_stops_on_sigterm(
    fresh_database_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    environment = {
        **os.environ,
        "REGIO_DATABASE_URL": fresh_database_url,
        "REGIO_NATS_URL": nats_server.url,
        "REGIO_BILLING_LISTEN_ADDRESS": address,
        "REGIO_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "billing.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "regio_billing",
            env=environment,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = billing_pb2_grpc.BillingStub(channel)
            await wait_until_serving(stub, process)
            await stub.AddCredits(
                billing_pb2.AddCreditsRequest(
                    account_id="acct-process", amount_nano=7_000, idempotency_key="process-pay"
                )
            )
            balance = await stub.GetBalance(
                billing_pb2.GetBalanceRequest(account_id="acct-process")
            )
        assert (balance.balance_nano, balance.available_nano) == (7_000, 7_000)

        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(process.wait(), timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    log = log_path.read_text()
    assert exit_code == 0, log
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    ready = [event for event in events if event.get("event") == "billing_ready"]
    assert ready and ready[0]["address"] == address and ready[0]["service"] == "billing"
    assert events[-1]["event"] == "billing_stopped"
