"""The real gateway app and HTTP server (edge runner, middlewares, handlers) on a free port, with
fakes where it would reach other processes: billing's gRPC stub and the worker dispatcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from regio.billing.v1 import billing_pb2
from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Catalogue
from regio_common.config_records import (
    AccountRecord,
    ActivationRecord,
    ApiKeyRecord,
    ThinkingSettings,
    UsageLimits,
    hash_api_key,
)
from regio_common.settings import DEFAULT_CATALOGUE
from regio_common.subjects import account_kv_key, activation_kv_key, api_key_kv_key
from regio_gateway.app import build_app
from regio_gateway.billing_client import BillingClient
from regio_gateway.config_store import ConfigStore
from regio_gateway.edge_server import make_runner
from regio_gateway.metrics import GatewayMetrics
from regio_gateway.settings import GatewaySettings
from regio_gateway.state import GatewayState
from regio_gateway.worker_registry import WorkerRegistry

PEPPER = "unit-test-pepper"
API_KEY = "rg-unit-test-key"
OTHER_KEY = "rg-unit-test-other-key"
ACCOUNT = "acct-1"


def held(headroom: billing_pb2.RateLimitHeadroom | None = None) -> billing_pb2.ReserveResponse:
    response = billing_pb2.ReserveResponse(
        outcome=billing_pb2.RESERVE_OUTCOME_HELD, held_nano=1000, available_nano=10**9
    )
    if headroom is not None:
        response.headroom.CopyFrom(headroom)
    return response


def limited(
    kind: billing_pb2.LimitKind.ValueType,
    scope: billing_pb2.LimitScope.ValueType,
    limit: int,
    used: int,
    retry_after_ms: int,
) -> billing_pb2.ReserveResponse:
    return billing_pb2.ReserveResponse(
        outcome=billing_pb2.RESERVE_OUTCOME_LIMITED,
        limit=billing_pb2.LimitExceeded(
            kind=kind, scope=scope, limit=limit, used=used, retry_after_ms=retry_after_ms
        ),
    )


@dataclass
class FakeBillingStub:
    """Answers Reserve with the queued responses (then with a plain hold); records the calls."""

    answers: list[billing_pb2.ReserveResponse] = field(default_factory=list)
    reserves: list[billing_pb2.ReserveRequest] = field(default_factory=list)
    releases: list[billing_pb2.ReleaseRequest] = field(default_factory=list)

    async def Reserve(
        self, request: billing_pb2.ReserveRequest, **call_options: Any
    ) -> billing_pb2.ReserveResponse:
        self.reserves.append(request)
        return self.answers.pop(0) if self.answers else held()

    async def ReserveMany(
        self, request: billing_pb2.ReserveManyRequest, **call_options: Any
    ) -> billing_pb2.ReserveManyResponse:
        return billing_pb2.ReserveManyResponse(
            responses=[await self.Reserve(one) for one in request.requests]
        )

    async def Release(
        self, request: billing_pb2.ReleaseRequest, **call_options: Any
    ) -> billing_pb2.ReleaseResponse:
        self.releases.append(request)
        return billing_pb2.ReleaseResponse()


class FakeWorkerStream:
    """A worker's answer: `pieces` then a final chunk; or, when `endless`, big pieces until the
    gateway cancels; or, given a `script`, exactly those chunks (numbered in order)."""

    def __init__(
        self,
        transaction_id: str,
        pieces: list[str],
        endless: bool,
        script: list[inference_pb2.InferenceChunk] | None = None,
        arrived_together: bool = False,
    ) -> None:
        self.transaction_id = transaction_id
        self._arrived_together = arrived_together
        self.worker_id = "worker-1"
        self.country = "de"
        self.finished = False
        self.cancelled = asyncio.Event()
        self._pieces = pieces
        self._endless = endless
        self._script = script

    async def chunks(self) -> AsyncIterator[inference_pb2.InferenceChunk]:
        if self._script is not None:
            for sequence, scripted in enumerate(self._script, start=1):
                chunk = inference_pb2.InferenceChunk()
                chunk.CopyFrom(scripted)
                chunk.sequence = sequence
                yield chunk
            self.finished = True
            return
        sequence = 0
        while self._endless and not self.cancelled.is_set():
            sequence += 1
            yield inference_pb2.InferenceChunk(
                kind=inference_pb2.CHUNK_KIND_DELTA, sequence=sequence, text_delta="x" * 65536
            )
            await asyncio.sleep(0)  # a real stream waits for NATS between chunks
        for piece in self._pieces:
            sequence += 1
            yield inference_pb2.InferenceChunk(
                kind=inference_pb2.CHUNK_KIND_DELTA, sequence=sequence, text_delta=piece
            )
        self.finished = True
        yield inference_pb2.InferenceChunk(
            kind=inference_pb2.CHUNK_KIND_FINAL,
            sequence=sequence + 1,
            finish_reason=inference_pb2.FINISH_REASON_STOP,
            usage=inference_pb2.Usage(prompt_tokens=3, completion_tokens=len(self._pieces)),
        )

    def has_waiting_chunk(self) -> bool:
        """As WorkerStream's: here, every chunk has arrived or none has."""
        return self._arrived_together and not self.finished

    async def cancel(self) -> None:
        self.cancelled.set()
        self.finished = True

    async def close(self) -> None:
        return None


@dataclass
class FakeDispatcher:
    pieces: list[str] = field(default_factory=lambda: ["Hello", " there"])
    endless: bool = False
    streams: list[FakeWorkerStream] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    # Set: every opened stream waits for it before its first chunk (a request kept in flight).
    gate: asyncio.Event | None = None
    # Set: every stream answers these chunks (the last one should be the FINAL chunk).
    script: list[inference_pb2.InferenceChunk] | None = None
    # True: a stream's chunks have all arrived when the gateway reads the first one.
    arrived_together: bool = False
    # The requests the gateway dispatched, in order.
    requests: list[inference_pb2.InferenceRequest] = field(default_factory=list)
    # Offers made while billing decided, whose hold was then refused.
    abandoned: list[asyncio.Future[FakeWorkerStream]] = field(default_factory=list)

    async def open(
        self, request: inference_pb2.InferenceRequest, countries: list[str]
    ) -> FakeWorkerStream:
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        stream = FakeWorkerStream(
            request.transaction_id, self.pieces, self.endless, self.script, self.arrived_together
        )
        self.streams.append(stream)
        self.opened.set()
        return stream

    def abandon(self, offer: asyncio.Future[FakeWorkerStream]) -> None:
        """As Dispatcher.abandon: the offered stream is cancelled unread once it opens."""
        self.abandoned.append(offer)
        offer.add_done_callback(
            lambda done: (
                None
                if done.cancelled() or done.exception() is not None
                else done.result().cancelled.set()
            )
        )


@dataclass
class RunningGateway:
    url: str
    port: int
    state: GatewayState
    billing: FakeBillingStub
    dispatcher: FakeDispatcher
    metrics: GatewayMetrics


def _publish(store: ConfigStore, key: str, record: Any) -> None:
    store.apply(key, record.model_dump_json().encode(), False)


@asynccontextmanager
async def running_gateway(
    key_limits: UsageLimits | None = None,
    account_limits: UsageLimits | None = None,
    catalogue: Catalogue | None = None,
    thinking: ThinkingSettings | None = None,
    **settings: Any,
) -> AsyncIterator[RunningGateway]:
    """The gateway on 127.0.0.1 with two keys of one account (only API_KEY has `key_limits`)
    and `liv` activated in region eu (with `thinking` settings, if given), routes from
    `catalogue` (default: the dev catalogue)."""
    gateway_settings = GatewaySettings(api_key_pepper=PEPPER, **settings)
    config = ConfigStore(pepper=PEPPER)
    limits = key_limits or UsageLimits()
    _publish(
        config,
        api_key_kv_key(hash_api_key(API_KEY, PEPPER)),
        ApiKeyRecord(key_id="key-1", account_id=ACCOUNT, limits=limits),
    )
    _publish(
        config,
        api_key_kv_key(hash_api_key(OTHER_KEY, PEPPER)),
        ApiKeyRecord(key_id="key-2", account_id=ACCOUNT),
    )
    if account_limits is not None:
        _publish(
            config,
            account_kv_key(ACCOUNT),
            AccountRecord(account_id=ACCOUNT, limits=account_limits),
        )
    _publish(
        config,
        activation_kv_key(ACCOUNT, "liv", "eu"),
        ActivationRecord(
            account_id=ACCOUNT,
            route="liv",
            region="eu",
            thinking=thinking or ThinkingSettings(),
            created=1,
        ),
    )
    config.synced.set()
    metrics = GatewayMetrics()
    billing = BillingClient("127.0.0.1:9", 1.0, token="", metrics=metrics)
    stub = FakeBillingStub()
    billing._stub = stub  # type: ignore[assignment]  # the channel is never used
    dispatcher = FakeDispatcher()
    state = GatewayState.with_edge_protections(
        gateway_settings,
        catalogue=catalogue or Catalogue.load(DEFAULT_CATALOGUE),
        nats=None,  # type: ignore[arg-type]  # only /health reads it
        config=config,
        workers=WorkerRegistry(expiry_factor=3.0),
        billing=billing,
        dispatcher=dispatcher,  # type: ignore[arg-type]
        metrics=metrics,
    )
    runner = make_runner(build_app(state), gateway_settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", port, state, stub, dispatcher, metrics)
    finally:
        await runner.cleanup()
        await billing.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Polls a condition of the gateway's state (no event to wait for there), for 10 s at most."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "liv", "messages": [{"role": "user", "content": "Hi"}], **extra}


def bearer(key: str = API_KEY, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


def thinking_catalogue(token_budget: bool = True) -> Catalogue:
    """The dev catalogue whose `liv` reasons (capability `thinking`, reasoning markers, the
    reasoning parameters) and, unless told otherwise, takes a reasoning budget; its outputs may
    reach 8192 tokens."""
    document = Catalogue.load(DEFAULT_CATALOGUE).model_dump(mode="json")
    liv = document["routes"]["liv"]
    liv["source"] |= {"thinking_start": "<think>", "thinking_end": "</think>"}
    liv["capabilities"] |= {"thinking": True, "token_budget": token_budget}
    liv["supported_parameters"] += ["reasoning", "reasoning_effort"]
    liv["max_output_tokens"] = 8192
    for route in document["routes"].values():
        del route["name"]  # the catalogue names routes by their keys
    return Catalogue.model_validate(document)
