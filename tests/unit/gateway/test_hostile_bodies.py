"""Bodies found by the fuzz run that once reached a 500 (some after the credit hold): each is a
400 naming the culprit, and nothing stays held."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.unit.gateway.fake_gateway import bearer, running_gateway

VALID = b'{"model": "liv", "messages": [{"role": "user", "content": "Hi"}]'


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"[" * 100_000, "body"),  # deeper than Python's recursion limit
        (VALID + b', "max_tokens": ' + b"7" * 5000 + b"}", "body"),  # > 4300 digits
        (VALID.replace(b'"Hi"', b'"\\ud800"') + b"}", "body"),  # unpaired surrogate
        (VALID + b', "seed": ' + str(2**70).encode() + b"}", "seed"),  # beyond int64
    ],
    ids=["deep-nesting", "huge-integer", "lone-surrogate", "seed-out-of-range"],
)
async def test_hostile_bodies_are_400s_and_hold_nothing(body: bytes, param: str) -> None:
    async with running_gateway() as gateway, aiohttp.ClientSession(gateway.url) as http:
        headers = {**bearer(), "Content-Type": "application/json"}
        async with http.post("/v1/chat/completions", data=body, headers=headers) as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert (error["code"], error["param"]) == ("invalid_value", param)
    assert gateway.billing.reserves == []


async def test_a_surrogate_pair_is_text_and_is_served() -> None:
    async with running_gateway() as gateway, aiohttp.ClientSession(gateway.url) as http:
        body = VALID.replace(b'"Hi"', b'"\\ud83d\\ude00"') + b"}"
        headers = {**bearer(), "Content-Type": "application/json"}
        async with http.post("/v1/chat/completions", data=body, headers=headers) as response:
            assert response.status == 200


async def test_a_key_of_non_ascii_bytes_is_an_unknown_key() -> None:
    async with running_gateway() as gateway:
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            # Raw bytes in the header: aiohttp decodes them into text that cannot be encoded
            # again; a real key is printable ASCII.
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
                + b"Authorization: Bearer rg-\xff\xfe\xfd\r\n"
                + b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                + b"Connection: close\r\n\r\n{}"
            )
            await writer.drain()
            answer = await reader.read()
            writer.close()
            status_line, _, rest = answer.partition(b"\r\n")
            assert status_line.split()[1] == b"403", answer
            assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == (
                "invalid_api_key"
            )
    assert gateway.billing.reserves == []
