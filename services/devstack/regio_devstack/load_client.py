"""A bounded load generator for one API key, run as its own process:

    python -m regio_devstack.load_client --url http://127.0.0.1:8080 --key rg-… \\
        --concurrency 8 --duration 15 --max-requests 5000 [--rate 100]

It sends small chat completions from `concurrency` loops until `duration` seconds have passed or
`max_requests` were sent (whichever comes first; `--rate` caps the requests per second; SIGTERM
ends it early, letting the requests in flight finish), then
prints one JSON summary: requests by status, how many 429s carried `Retry-After` and their
envelope `type` (`requests`, `concurrency`, …), error answers without the OpenAI envelope, the
2xx answers per UTC minute (rate limits count per UTC minute), latencies by status, and
requests per second. It runs in its own process so that the load and the
measurements of the test that starts it do not share an event loop (or the GIL)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

CONNECTION_ERROR = "connection_error"


@dataclass(frozen=True)
class LoadPlan:
    url: str
    key: str
    concurrency: int
    duration_seconds: float
    max_requests: int
    rate_per_second: float = 0.0  # 0: as fast as the loops go
    model: str = "liv"
    max_tokens: int = 4
    host: str | None = None  # a Host header, to address a region's endpoint
    request_timeout_seconds: float = 30.0


@dataclass
class Outcome:
    status: str  # the HTTP status, or CONNECTION_ERROR
    sent_unix: float
    latency_seconds: float
    retry_after: bool = False
    error_type: str | None = None  # an error answer's envelope `type`; None: not an envelope


@dataclass
class LoadRecorder:
    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self, elapsed_seconds: float) -> dict[str, Any]:
        by_status = Counter(outcome.status for outcome in self.outcomes)
        served = [o for o in self.outcomes if o.status.startswith("2")]
        limited = [o for o in self.outcomes if o.status == "429"]
        answered_errors = [
            o for o in self.outcomes if o.status != CONNECTION_ERROR and o.status >= "300"
        ]
        return {
            "requests": len(self.outcomes),
            "by_status": dict(sorted(by_status.items())),
            "ok_by_utc_minute": _sorted_counts(_utc_minute(o.sent_unix) for o in served),
            "rate_limited_with_retry_after": sum(1 for o in limited if o.retry_after),
            "rate_limited_by_type": _sorted_counts(str(o.error_type) for o in limited),
            "errors_without_envelope": sum(1 for o in answered_errors if o.error_type is None),
            "latency_ms": {
                status: _latency_figures(
                    [o.latency_seconds for o in self.outcomes if o.status == status]
                )
                for status in sorted(by_status)
            },
            "elapsed_seconds": round(elapsed_seconds, 3),
            "requests_per_second": round(len(self.outcomes) / max(elapsed_seconds, 1e-9), 1),
        }


def _utc_minute(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _sorted_counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _latency_figures(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    milliseconds = [value * 1000 for value in ordered]

    def at(fraction: float) -> float:
        return round(milliseconds[min(len(milliseconds) - 1, int(fraction * len(milliseconds)))], 2)

    return {
        "p50": round(statistics.median(milliseconds), 2),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(milliseconds[-1], 2),
    }


def _envelope_type(body: bytes) -> str | None:
    """The `type` of an OpenAI error envelope, or None when the body is not one."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        return None
    return str(error["type"])


class _Pacer:
    """Hands out send times `rate` per second apart (none when rate is 0), and stops handing
    out once the plan's time or count is used up, or `stop()` was called."""

    def __init__(self, plan: LoadPlan, started: float) -> None:
        self._plan = plan
        self._started = started
        self._issued = 0
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    async def next_slot(self) -> bool:
        if self._stopped or self._issued >= self._plan.max_requests:
            return False
        slot = self._issued
        self._issued += 1
        if self._plan.rate_per_second > 0:
            delay = self._started + slot / self._plan.rate_per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elapsed = time.monotonic() - self._started
        return not self._stopped and elapsed < self._plan.duration_seconds


async def run_load(plan: LoadPlan) -> dict[str, Any]:
    recorder = LoadRecorder()
    body = json.dumps(
        {
            "model": plan.model,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": plan.max_tokens,
            "temperature": 0,
        }
    ).encode()
    headers = {"Authorization": f"Bearer {plan.key}", "Content-Type": "application/json"}
    if plan.host is not None:
        headers["Host"] = plan.host
    endpoint = plan.url.rstrip("/") + "/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=plan.request_timeout_seconds)
    started = time.monotonic()
    pacer = _Pacer(plan, started)

    async def one(session: aiohttp.ClientSession) -> Outcome:
        sent_unix, sent = time.time(), time.perf_counter()
        try:
            async with session.post(endpoint, data=body, headers=headers) as response:
                answer = await response.read()
                status = response.status
                return Outcome(
                    status=str(status),
                    sent_unix=sent_unix,
                    latency_seconds=time.perf_counter() - sent,
                    retry_after="Retry-After" in response.headers,
                    error_type=_envelope_type(answer) if status >= 400 else None,
                )
        except (aiohttp.ClientError, TimeoutError):
            return Outcome(CONNECTION_ERROR, sent_unix, time.perf_counter() - sent)

    async def loop(session: aiohttp.ClientSession) -> None:
        while await pacer.next_slot():
            recorder.outcomes.append(await one(session))

    # SIGTERM ends the run early: no new requests, the ones in flight finish, the summary prints.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pacer.stop)
    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(loop(session) for _ in range(plan.concurrency)))
    return recorder.summary(time.monotonic() - started)


def parse_plan(argv: list[str] | None = None) -> LoadPlan:
    parser = argparse.ArgumentParser(
        prog="python -m regio_devstack.load_client",
        description="Send bounded load with one API key; print a JSON summary.",
    )
    parser.add_argument("--url", required=True, help="the gateway's base URL")
    parser.add_argument("--key", required=True, help="the API key to send")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel request loops")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to keep sending")
    parser.add_argument("--max-requests", type=int, default=10_000, help="most requests sent")
    parser.add_argument("--rate", type=float, default=0.0, help="requests per second (0: max)")
    parser.add_argument("--model", default="liv")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--host", default=None, help="Host header (a region's endpoint)")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.max_requests < 1 or args.duration <= 0 or args.rate < 0:
        parser.error("concurrency, max-requests and duration must be positive, rate ≥ 0")
    return LoadPlan(
        url=args.url,
        key=args.key,
        concurrency=args.concurrency,
        duration_seconds=args.duration,
        max_requests=args.max_requests,
        rate_per_second=args.rate,
        model=args.model,
        max_tokens=args.max_tokens,
        host=args.host,
        request_timeout_seconds=args.request_timeout,
    )


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(asyncio.run(run_load(parse_plan(argv))), indent=2), flush=True)


if __name__ == "__main__":
    main()
