"""Concurrent streamed chat completions against any OpenAI-compatible server, timed per stream:
the load side of `make bench-model`. Every server gets the same requests from the same client."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
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


async def stream_once(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], payload: bytes
) -> StreamSample | None:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with session.post(url, data=payload, headers=headers) as response:
        if response.status != 200:
            await response.read()
            return None
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                return None
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter() - started
    if first is None:
        return None
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
    errors = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for _ in range(requests_per_stream):
            try:
                sample = await stream_once(session, url, headers, payload)
            except (TimeoutError, aiohttp.ClientError, ValueError):
                sample = None
            if sample is None:
                errors += 1
            else:
                samples.append(sample)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
    ) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return LoadResult(concurrency, wall, samples, errors)
