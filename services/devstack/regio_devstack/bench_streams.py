"""Concurrent streamed chat completions against any OpenAI-compatible server, timed per stream:
the load side of `make bench-model`. Every server gets the same requests from the same client."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class StreamSample:
    first_token_seconds: float
    seconds: float
    tokens: int  # content-bearing chunks: one per generated token on every server measured


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    wall_seconds: float
    samples: list[StreamSample]
    errors: int
    error_kinds: Counter[str] = field(default_factory=Counter)

    @property
    def tokens_per_second(self) -> float:
        return sum(s.tokens for s in self.samples) / self.wall_seconds

    def first_token_ms(self, quantile: float) -> float:
        values = sorted(s.first_token_seconds for s in self.samples)
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0] * 1000
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cuts[round(quantile * 100) - 1] * 1000


class StreamFailed(Exception):
    """A stream that did not deliver an answer (the message says how)."""


async def stream_once(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], payload: bytes
) -> StreamSample:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with session.post(url, data=payload, headers=headers) as response:
        if response.status != 200:
            await response.read()
            raise StreamFailed(f"http {response.status}")
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise StreamFailed("error event")
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter() - started
    if first is None:
        raise StreamFailed("no content")
    return StreamSample(first, time.perf_counter() - started, tokens)


async def run_streams(
    base_url: str,
    api_key: str,
    body: dict[str, Any],
    concurrency: int,
    requests_per_stream: int,
) -> LoadResult:
    """`concurrency` clients, each sending `requests_per_stream` streamed requests in turn."""
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    payload = json.dumps({**body, "stream": True}).encode()
    samples: list[StreamSample] = []
    errors: Counter[str] = Counter()

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in range(requests_per_stream):
            try:
                samples.append(await stream_once(session, url, headers, payload))
            except StreamFailed as failure:
                errors[str(failure)] += 1
            except (TimeoutError, aiohttp.ClientError, ValueError) as error:
                errors[type(error).__name__] += 1

    timeout = aiohttp.ClientTimeout(total=600)
    # A new connection per request: servers differ in how they keep connections alive after a
    # stream, and a reused connection the server has closed would count against it.
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return LoadResult(concurrency, wall, samples, sum(errors.values()), errors)
