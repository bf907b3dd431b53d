"""Talk to workers directly over NATS, the way the gateway does: for smoke tests of a worker
without the rest of the platform, and for the worker's own tests.

    python -m regio_worker.probe --route liv --country de "Say hello"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from regio.inference.v1 import inference_pb2
from regio_common.ids import new_transaction_id
from regio_common.nats_connection import connect_nats
from regio_common.reader_check import (
    answer_reader_check,
    confirm_final,
    is_no_responders,
    is_reader_check,
)
from regio_common.subjects import cancel_subject, infer_subject

END_KINDS = (inference_pb2.CHUNK_KIND_FINAL, inference_pb2.CHUNK_KIND_REJECTED)


class NoRespondersError(RuntimeError):
    """No worker serves that country and route."""


class InferenceCall:
    """One request on its private reply inbox."""

    def __init__(self, nc: Client, subscription: Subscription, transaction_id: str) -> None:
        self._nc = nc
        self._subscription = subscription
        self.transaction_id = transaction_id
        self._deltas_read = 0

    @classmethod
    async def open(
        cls, nc: Client, country: str, route: str, request: inference_pb2.InferenceRequest
    ) -> InferenceCall:
        inbox = nc.new_inbox()
        subscription = await nc.subscribe(inbox)
        payload = request.SerializeToString()
        await nc.publish(infer_subject(country, route), payload, reply=inbox)
        return cls(nc, subscription, request.transaction_id)

    async def next_chunk(self, wait_seconds: float = 10.0) -> inference_pb2.InferenceChunk:
        msg = await self._subscription.next_msg(timeout=wait_seconds)
        while is_reader_check(msg):  # the worker asks whether we still read: we do
            await answer_reader_check(self._nc, msg, self._deltas_read)
            msg = await self._subscription.next_msg(timeout=wait_seconds)
        if is_no_responders(msg):
            raise NoRespondersError(f"no worker subscribed to {msg.subject!r}: {msg.headers}")
        chunk = inference_pb2.InferenceChunk.FromString(msg.data)
        if chunk.kind == inference_pb2.CHUNK_KIND_DELTA:
            self._deltas_read += 1
        if chunk.kind == inference_pb2.CHUNK_KIND_FINAL:
            await confirm_final(self._nc, msg)
        return chunk

    async def until_end(self, wait_seconds: float = 10.0) -> list[inference_pb2.InferenceChunk]:
        """Chunks up to and including FINAL or REJECTED (waiting at most `wait_seconds` each)."""
        chunks: list[inference_pb2.InferenceChunk] = []
        while not chunks or chunks[-1].kind not in END_KINDS:
            chunks.append(await self.next_chunk(wait_seconds))
        return chunks

    async def cancel(self, worker_id: str, *, delivered_deltas: int = 0) -> None:
        cancel = inference_pb2.CancelRequest(
            transaction_id=self.transaction_id, delivered_deltas=delivered_deltas
        )
        await self._nc.publish(cancel_subject(worker_id), cancel.SerializeToString())

    async def close(self) -> None:
        await self._subscription.unsubscribe()


def chat_request(
    prompt: str,
    *,
    route: str,
    max_tokens: int = 64,
    transaction_id: str | None = None,
    free_system_prompt: str = "",
    deadline_unix_ms: int = 0,
    stream: bool = True,
) -> inference_pb2.InferenceRequest:
    """A chat request as the gateway sends it; `stream` (the default): the text as it comes."""
    return inference_pb2.InferenceRequest(
        transaction_id=transaction_id or new_transaction_id(),
        account_id="probe",
        route=route,
        region="probe",
        messages=[inference_pb2.ChatMessage(role="user", content=prompt)],
        sampling=inference_pb2.SamplingParams(max_tokens=max_tokens),
        free_system_prompt=free_system_prompt,
        deadline_unix_ms=deadline_unix_ms,
        stream=stream,
    )


async def _probe(args: argparse.Namespace) -> int:
    nc = await connect_nats(args.nats_url, name="regio-worker-probe")
    request = chat_request(args.prompt, route=args.route, max_tokens=args.max_tokens)
    call = await InferenceCall.open(nc, args.country, args.route, request)
    try:
        chunk = await call.next_chunk(args.timeout)
        while chunk.kind not in END_KINDS:
            print(chunk.text_delta, end="", flush=True)
            chunk = await call.next_chunk(args.timeout)
        print()
        print(json.dumps(MessageToDict(chunk, preserving_proto_field_name=True), indent=2))
        return 0 if chunk.kind == inference_pb2.CHUNK_KIND_FINAL else 1
    finally:
        await call.close()
        await nc.drain()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("prompt")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--country", default="de")
    parser.add_argument("--route", default="liv")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds between chunks")
    return asyncio.run(_probe(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
