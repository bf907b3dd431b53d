"""Global protections of the gateway against the running stack: oversized headers, too many
content parts, slow bodies, streams whose reader stalls, and failed-auth throttling.

The tight limits run on a second gateway process of the same stack (same NATS, billing and
config), so that the session's gateway keeps its defaults for the other tests."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from aiohttp import web

from regio_devstack.processes import ManagedProcess, free_port
from regio_devstack.stack import Stack
from tests.e2e.helpers import settled_balance

HI: Any = [{"role": "user", "content": "Hi"}]
GUESSER = "203.0.113.5"  # the edge gateway trusts one proxy hop: X-Forwarded-For names clients
AUTH_FAILURES_ALLOWED = 3


@dataclass(frozen=True)
class EdgeGateway:
    url: str
    port: int
    ops_url: str
    process: ManagedProcess


@pytest.fixture(scope="module")
def edge(stack: Stack) -> Iterator[EdgeGateway]:
    port, ops_port = free_port(), free_port()
    process = stack.start_service(
        "gateway-edge",
        "regio_gateway",
        REGIO_GATEWAY_PORT=str(port),
        REGIO_GATEWAY_METRICS_PORT=str(ops_port),
        REGIO_AUTH_FAILURES_PER_MINUTE=str(AUTH_FAILURES_ALLOWED),
        REGIO_TRUSTED_PROXY_HOPS="1",
        REGIO_BODY_READ_TIMEOUT_SECONDS="1",
        REGIO_STREAM_WRITE_TIMEOUT_SECONDS="1",
    )
    gateway = EdgeGateway(f"http://127.0.0.1:{port}", port, f"http://127.0.0.1:{ops_port}", process)
    try:
        process.wait_until(lambda: _ready(gateway.ops_url), timeout=60, what="readiness")
        yield gateway
    finally:
        process.stop()
        stack.services.remove(process)


def _ready(ops_url: str) -> bool:
    try:
        with urllib.request.urlopen(ops_url + "/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def raw_exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends raw bytes, reads one answer with a Content-Length."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(raw)
        received = b""
        while b"\r\n\r\n" not in received:
            piece = connection.recv(65536)
            assert piece, f"connection closed before an answer: {received!r}"
            received += piece
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        while len(body) < int(headers["content-length"]):
            piece = connection.recv(65536)
            assert piece
            body += piece
    return int(status_line.split()[1]), headers, body


def assert_envelope(body: bytes, code: str, param: str | None = None) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_a_header_beyond_the_limit_is_a_400_envelope(stack: Stack) -> None:
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    raw = (
        "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-Oversized: {'v' * 10_000}\r\n\r\n"  # the default limit is 8,190 bytes
    ).encode()
    status, headers, body = raw_exchange(port, raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers["x-transaction-id"].startswith("txn-")
    assert_envelope(body, "invalid_value")


def test_too_many_content_parts_is_a_400_naming_the_message(client: openai.OpenAI) -> None:
    parts: Any = [{"type": "text", "text": "Hi"}] * 65  # the default limit is 64
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="liv", messages=[{"role": "user", "content": parts}], max_tokens=1
        )
    assert caught.value.code == "invalid_value"
    assert caught.value.param == "messages[0].content"


def test_a_body_that_stalls_is_a_408_and_holds_nothing(
    stack: Stack, edge: EdgeGateway, new_customer: Any
) -> None:
    customer = new_customer(credit_eur="1")
    before = settled_balance(stack, customer.account_id)
    body = json.dumps({"model": "liv", "messages": HI, "max_tokens": 1}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {customer.api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    status, headers, answer = raw_exchange(edge.port, head + body[: len(body) // 2])
    assert status == 408
    assert time.monotonic() - started < 10
    assert headers["connection"] == "close"
    assert_envelope(answer, "request_timeout", "body")
    after = stack.admin("GET", f"/admin/v1/accounts/{customer.account_id}/balance")
    assert after["held_nano"] == 0
    assert after["balance_nano"] == before["balance_nano"]


def test_failed_auth_throttling_answers_429_before_any_key_check(
    stack: Stack, edge: EdgeGateway, demo: Any
) -> None:
    guesser = {"X-Forwarded-For": GUESSER}
    for attempt in range(AUTH_FAILURES_ALLOWED + 1):
        guess = f"rg-guessed-key-{attempt}"
        status, _, body = _get_models(edge, {**guesser, "Authorization": f"Bearer {guess}"})
        assert status == 403
    # Now even the right key is refused from that address, before it is looked at.
    status, headers, body = _get_models(
        edge, {**guesser, "Authorization": f"Bearer {demo.api_key}"}
    )
    assert status == 429
    assert_envelope(body, "too_many_requests")
    assert 1 <= int(headers["retry-after"]) <= 60
    # Another address is served.
    other = {"X-Forwarded-For": "203.0.113.6", "Authorization": f"Bearer {demo.api_key}"}
    assert _get_models(edge, other)[0] == 200

    with urllib.request.urlopen(edge.ops_url + "/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    assert f"regio_gateway_auth_failures_total {AUTH_FAILURES_ALLOWED + 1}.0" in metrics
    log = edge.process.log_path.read_text()
    throttled = [json.loads(line) for line in log.splitlines() if '"auth_throttled"' in line]
    assert [line["client_address"] for line in throttled] == [GUESSER]
    assert "rg-guessed-key" not in log  # the address is logged, never a presented key


def _get_models(edge: EdgeGateway, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(edge.url + "/v1/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


# --- a stalled stream reader ----------------------------------------------------------------


@dataclass
class EndlessUpstream:
    """An OpenAI-compatible upstream for a proxy worker: while `endless`, it streams 8 KB
    pieces until the worker hangs up; otherwise a two-piece answer."""

    endless: bool = True
    disconnected: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if self.endless:
                while True:
                    await _event(
                        response, {"choices": [{"index": 0, "delta": {"content": "x" * 8192}}]}
                    )
            for piece in ("Hello", "!"):
                await _event(response, {"choices": [{"index": 0, "delta": {"content": piece}}]})
            await _event(
                response, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            )
            usage = {"prompt_tokens": 5, "completion_tokens": 2}
            await _event(response, {"choices": [], "usage": usage})
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response


def _delta(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


async def _event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())


@pytest.fixture
def endless_upstream() -> Iterator[EndlessUpstream]:
    upstream = EndlessUpstream()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.chat)
    runner = web.AppRunner(app, handler_cancellation=True)
    loop.run_until_complete(runner.setup())
    port = free_port()
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    upstream.url = f"http://127.0.0.1:{port}/v1"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield upstream
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_a_stalled_stream_reader_frees_the_worker(
    stack: Stack, edge: EdgeGateway, new_customer: Any, endless_upstream: EndlessUpstream
) -> None:
    customer = new_customer(credit_eur="1", regions=("nl",))
    # One slot: the next request is only served once the stalled one has let go of it.
    worker = stack.start_worker(
        "liv",
        "nl",
        REGIO_WORKER_ENGINE="openai_proxy",
        REGIO_UPSTREAM_BASE_URL=endless_upstream.url,
        REGIO_UPSTREAM_MAX_CONCURRENCY="1",
    )
    try:
        stack.wait_for_worker(worker, "liv", "nl")
        with _stalled_stream(edge, customer.api_key):
            stopped = endless_upstream.disconnected.wait(timeout=60)
            assert stopped, "the generation of the stalled stream was not stopped"
            # The worker's usage record settled what was generated before the cancel.
            after = settled_balance(stack, customer.account_id, timeout=30)
            assert after["balance_nano"] < 10**9

        endless_upstream.endless = False
        nl = openai.OpenAI(
            base_url=edge.url + "/v1",
            api_key=customer.api_key,
            max_retries=0,
            default_headers={"Host": "nl.localhost"},
        )
        answer = nl.chat.completions.create(model="liv", messages=HI, max_tokens=4)
        assert answer.choices[0].message.content == "Hello!"
    finally:
        worker.stop()
        stack.services.remove(worker)


@contextmanager
def _stalled_stream(edge: EdgeGateway, api_key: str) -> Iterator[None]:
    """Asks for a stream, reads its first bytes, then stops reading (the socket stays open)."""
    body = json.dumps({"model": "liv", "messages": HI, "max_tokens": 2048, "stream": True}).encode()
    client = socket.socket()
    # A small receive window, so that the gateway's buffers fill after a few MB.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(30)
    client.connect(("127.0.0.1", edge.port))
    client.sendall(
        (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: nl.localhost\r\n"
            f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    try:
        first = client.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        yield
    finally:
        client.close()
