"""The floor of `make bench-overhead`: Regio's hops with none of Regio's work in them.

Three processes built from the same parts as Regio's critical path, each doing only what its
hop must: an HTTP server (aiohttp on uvloop) that, for each request, makes one gRPC call
(grpc.aio) to a hold process which inserts one row in PostgreSQL (one statement, its own
synchronous commit, like a Regio hold; a row of its own, so that holds never wait on each
other's locks) and, at the same time, one NATS request to a worker process,
which posts the body to the upstream (aiohttp) and answers with the upstream's body (a stream:
each piece as it comes, then an empty message). No validation, key check, billing logic,
settlement, usage record, metrics or logs.

What Regio adds over this floor is what its own code costs; what the floor adds over the
upstream is what the mandated parts (separate processes, gRPC, PostgreSQL, NATS) cost on this
machine, which no code on top of them can go below.

    python -m regio_devstack.bench_floor hold --port P --database-url URL
    python -m regio_devstack.bench_floor worker --nats-url URL --upstream URL
    python -m regio_devstack.bench_floor gateway --port P --nats-url URL --hold-port P"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import nats
import nats.errors
import uvloop
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from psycopg_pool import AsyncConnectionPool

from regio_devstack.processes import ManagedProcess, free_port, port_open
from regio_devstack.servers import NatsServer

RESERVE_METHOD = "/regio.bench.Floor/Reserve"
INFER_SUBJECT = "bench.floor.infer"
READY_SUBJECT = "bench.floor.ready"  # the worker answers it once it takes requests
# Seconds a floor request may take before it fails (the load client counts it as an error).
TIMEOUT_SECONDS = 30.0


def _streamed(body: bytes) -> bool:
    """Whether a chat request asks for a stream (the bench's load client writes JSON so; no
    parsing, as a floor should)."""
    return b'"stream": true' in body or b'"stream":true' in body


# -- hold: one gRPC method, one statement ------------------------------------------------------
async def run_hold(port: int, database_url: str) -> None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=2, max_size=8, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_floor_hold (id bigserial PRIMARY KEY, held bigint)"
        )

    async def reserve(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO bench_floor_hold (held) VALUES (1) RETURNING id"
            )
            row = await cursor.fetchone()
        return str(row[0] if row else 0).encode()

    server = grpc.aio.server()
    service, method = RESERVE_METHOD.strip("/").split("/")
    handler = grpc.unary_unary_rpc_method_handler(reserve)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- worker: NATS in, the upstream, NATS out ---------------------------------------------------
async def run_worker(nats_url: str, upstream_url: str) -> None:
    nc = await nats.connect(nats_url)
    session = aiohttp.ClientSession()

    async def infer(msg: Msg) -> None:
        streamed = _streamed(msg.data)
        async with session.post(
            upstream_url, data=msg.data, headers={"Content-Type": "application/json"}
        ) as response:
            if not streamed:
                await nc.publish(msg.reply, await response.read())
                return
            async for piece in response.content.iter_any():
                await nc.publish(msg.reply, piece)
        await nc.publish(msg.reply, b"")  # the end of a stream

    async def ready(msg: Msg) -> None:
        await nc.publish(msg.reply, b"ok")

    await nc.subscribe(INFER_SUBJECT, queue="floor", cb=infer)
    await nc.subscribe(READY_SUBJECT, cb=ready)
    await nc.flush()
    await asyncio.Event().wait()


# -- gateway: HTTP in, the hold and the worker side by side, HTTP out --------------------------
class _Inbox:
    """One wildcard subscription for every request's replies (as Regio's gateway does)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count(1)
        self._open: dict[str, asyncio.Queue[bytes]] = {}

    async def start(self) -> None:
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)
        await self._nc.flush()

    def open(self) -> tuple[str, asyncio.Queue[bytes]]:
        subject = f"{self._prefix}.{next(self._tokens)}"
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._open[subject] = queue
        return subject, queue

    def close(self, subject: str) -> None:
        self._open.pop(subject, None)

    async def _route(self, msg: Msg) -> None:
        queue = self._open.get(msg.subject)
        if queue is not None:
            queue.put_nowait(msg.data)


async def _wait_for_worker(nc: Client) -> None:
    """The gateway opens its port only once a worker takes requests (or the bench would
    wait out its first ones)."""
    async with asyncio.timeout(TIMEOUT_SECONDS):
        while True:
            try:
                await nc.request(READY_SUBJECT, b"", timeout=0.5)
                return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.05)


async def run_gateway(port: int, nats_url: str, hold_port: int) -> None:
    nc = await nats.connect(nats_url)
    inbox = _Inbox(nc)
    await inbox.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{hold_port}")
    reserve = channel.unary_unary(RESERVE_METHOD)
    await _wait_for_worker(nc)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        subject, replies = inbox.open()
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                await nc.publish(INFER_SUBJECT, body, reply=subject)
                await reserve(b"")
                first = await replies.get()
                if not _streamed(body):
                    return web.Response(body=first, content_type="application/json")
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                piece = first
                while piece:
                    await response.write(piece)
                    piece = await replies.get()
                await response.write_eof()
                return response
        finally:
            inbox.close(subject)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# -- the bench's side ---------------------------------------------------------------------------
@dataclass
class Floor:
    """The floor's processes (its own nats-server, no JetStream use, no users) and its URL."""

    nats: NatsServer
    processes: list[ManagedProcess]
    url: str  # its chat completions

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.nats.stop()


def start_floor(folder: Path, database_url: str, upstream_url: str) -> Floor:
    """Starts the floor in `folder` (logs, NATS store) in front of `upstream_url` (its chat
    completions); `database_url`: an empty database of its own. Returns once it serves."""
    nats_server = NatsServer(folder / "nats").start()
    hold_port, gateway_port = free_port(), free_port()
    module = [sys.executable, "-m", "regio_devstack.bench_floor"]
    roles = {
        "hold": ["--port", str(hold_port), "--database-url", database_url],
        "worker": ["--nats-url", nats_server.url, "--upstream", upstream_url],
        "gateway": [
            *("--port", str(gateway_port), "--nats-url", nats_server.url),
            *("--hold-port", str(hold_port)),
        ],
    }
    processes = [
        ManagedProcess(f"floor-{role}", [*module, role, *args], folder / f"{role}.log").start()
        for role, args in roles.items()
    ]
    floor = Floor(nats_server, processes, f"http://127.0.0.1:{gateway_port}/v1/chat/completions")
    try:
        for process, port in ((processes[0], hold_port), (processes[2], gateway_port)):
            process.wait_until(_port_opens(port), 30, "its port")
    except BaseException:
        floor.stop()
        raise
    return floor


def _port_opens(port: int) -> Callable[[], bool]:
    return lambda: port_open("127.0.0.1", port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    hold = roles.add_parser("hold")
    hold.add_argument("--port", type=int, required=True)
    hold.add_argument("--database-url", required=True)
    worker = roles.add_parser("worker")
    worker.add_argument("--nats-url", required=True)
    worker.add_argument("--upstream", required=True)
    gateway = roles.add_parser("gateway")
    gateway.add_argument("--port", type=int, required=True)
    gateway.add_argument("--nats-url", required=True)
    gateway.add_argument("--hold-port", type=int, required=True)
    args = parser.parse_args()
    if args.role == "hold":
        uvloop.run(run_hold(args.port, args.database_url))
    elif args.role == "worker":
        uvloop.run(run_worker(args.nats_url, args.upstream))
    else:
        uvloop.run(run_gateway(args.port, args.nats_url, args.hold_port))


if __name__ == "__main__":
    main()
