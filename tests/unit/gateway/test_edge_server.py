"""The public listener's own protections: requests aiohttp's parser rejects get the envelope
(never a 5xx), a body that does not arrive in time is a 408 before any credit is held, and a
stream whose client stopped reading is cancelled and dropped."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from tests.unit.gateway.fake_gateway import API_KEY, chat_body, running_gateway, wait_until


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends raw bytes and reads one answer (it has a Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        status_line, *header_lines = head.decode().strip().split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        body = await asyncio.wait_for(reader.readexactly(length), timeout=10)
    finally:
        writer.close()
    return int(status_line.split()[1]), headers, body


def request_head(path: str = "/v1/models", *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {API_KEY}"]
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(request_head("/v1/models?" + "q" * 600), id="long-request-line"),
        pytest.param(request_head("/v1/models", "X-Big: " + "v" * 600), id="long-header"),
        pytest.param(
            request_head("/v1/models", *(f"X-H{i}: 1" for i in range(20))), id="too-many-headers"
        ),
        pytest.param(request_head("/v1/models", "Bad\x01Name: 1"), id="invalid-header-char"),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            id="bad-content-length",
        ),
    ],
)
async def test_requests_the_parser_rejects_get_a_400_envelope(raw: bytes) -> None:
    async with running_gateway(
        max_request_line_bytes=512, max_header_bytes=512, max_headers=16
    ) as gateway:
        status, headers, body = await exchange(gateway.port, raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers["x-transaction-id"].startswith("txn-")
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_value"
    # The offending bytes are not echoed back.
    assert "vvvv" not in error["message"] and "qqqq" not in error["message"]


async def test_requests_within_the_header_limits_are_served() -> None:
    async with running_gateway(max_header_bytes=512, max_headers=16) as gateway:
        raw = request_head("/v1/models", "X-Fine: " + "v" * 400, "Connection: close")
        status, _, body = await exchange(gateway.port, raw)
    assert status == 200
    assert json.loads(body)["object"] == "list"


async def test_a_body_that_stalls_halfway_is_a_408_and_holds_no_credit() -> None:
    async with running_gateway(body_read_timeout_seconds=0.2) as gateway:
        body = json.dumps(chat_body()).encode()
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        # Half the body, then silence.
        status, headers, answer = await exchange(gateway.port, head + body[: len(body) // 2])
        assert gateway.billing.reserves == []
    assert status == 408
    assert headers["connection"] == "close"
    error = json.loads(answer)["error"]
    assert (error["code"], error["param"]) == ("request_timeout", "body")


async def test_a_body_sent_in_pieces_within_the_timeout_is_read_whole() -> None:
    async with running_gateway(body_read_timeout_seconds=5) as gateway:
        body = json.dumps(chat_body(messages=[{"role": "user", "content": "y" * 5000}])).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {API_KEY}\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        for start in range(0, len(body), 1000):
            writer.write(body[start : start + 1000])
            await writer.drain()
            await asyncio.sleep(0.01)
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200")


async def test_a_stream_whose_client_stopped_reading_is_cancelled_and_dropped() -> None:
    async with running_gateway(stream_write_timeout_seconds=0.3) as gateway:
        gateway.dispatcher.endless = True
        client = socket.socket()
        # A small receive window: the server's buffers fill after a few MB, not hundreds.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(client, ("127.0.0.1", gateway.port))
        body = json.dumps(chat_body(stream=True)).encode()
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        await loop.sock_sendall(client, head + body)
        try:
            # The client never reads: the gateway gives up on it and stops the generation.
            await asyncio.wait_for(gateway.dispatcher.opened.wait(), timeout=10)
            (stream,) = gateway.dispatcher.streams
            await asyncio.wait_for(stream.cancelled.wait(), timeout=30)
            await wait_until(lambda: gateway.state.in_flight.total == 0)
            # The connection was dropped: reading what is buffered ends in EOF or a reset.
            assert await asyncio.wait_for(_read_until_closed(loop, client), timeout=30)
        finally:
            client.close()
        # The worker's usage record settles the hold of a cancelled generation: no release.
        assert gateway.billing.releases == []


async def _read_until_closed(loop: asyncio.AbstractEventLoop, client: socket.socket) -> bool:
    try:
        while await loop.sock_recv(client, 1 << 20):
            pass
    except ConnectionResetError:
        pass
    return True
