"""Hand a request to a worker over NATS and follow its stream of chunks.

The request is published on the (country, route) queue-group subject with a private inbox as
reply subject. The worker that takes it answers with an ACCEPTED chunk (sequence 0), then DELTA
chunks and a FINAL chunk, in order. No subscriber at all is reported at once by the server
(no-responders status); a silent worker by a timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from regio.inference.v1 import inference_pb2
from regio_common.errors import ServerError, ServiceUnavailable, UpstreamTimeout
from regio_common.subjects import cancel_subject, infer_subject
from regio_gateway.worker_registry import WorkerRegistry

log = structlog.get_logger()
NO_RESPONDERS_STATUS = "503"


def _no_responders(msg: Msg) -> bool:
    return msg.headers is not None and msg.headers.get("Status") == NO_RESPONDERS_STATUS


class WorkerStream:
    """The chunks of one accepted request, checked for order; cancellable."""

    def __init__(
        self,
        nc: Client,
        subscription: Subscription,
        accepted: inference_pb2.InferenceChunk,
        first_chunk_timeout: float,
        inter_chunk_timeout: float,
    ) -> None:
        self._nc = nc
        self._subscription = subscription
        self.worker_id = accepted.worker_id
        self.country = accepted.country
        self.transaction_id = accepted.transaction_id
        self._first_timeout = first_chunk_timeout
        self._inter_timeout = inter_chunk_timeout
        self.finished = False

    async def chunks(self) -> AsyncIterator[inference_pb2.InferenceChunk]:
        expected = 1
        timeout = self._first_timeout
        while not self.finished:
            try:
                msg = await self._subscription.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                await self.cancel()
                raise UpstreamTimeout("The model worker stopped responding.") from None
            chunk = inference_pb2.InferenceChunk.FromString(msg.data)
            if chunk.sequence != expected:
                await self.cancel()
                log.error("chunk_out_of_order", expected=expected, got=chunk.sequence)
                raise ServerError("The response stream from the model worker was interrupted.")
            expected += 1
            timeout = self._inter_timeout
            if chunk.kind == inference_pb2.CHUNK_KIND_FINAL:
                self.finished = True
            yield chunk

    async def cancel(self) -> None:
        """Tell the worker to stop generating (client gone, or the gateway gave up)."""
        if self.finished:
            return
        self.finished = True
        try:
            await self._nc.publish(
                cancel_subject(self.worker_id),
                inference_pb2.CancelRequest(transaction_id=self.transaction_id).SerializeToString(),
            )
        except Exception as error:  # the worker's own deadline stops it if this cannot be sent
            log.warning("cancel_publish_failed", error=str(error))

    async def close(self) -> None:
        # Closing a subscription of an already closed connection is not an error here.
        with contextlib.suppress(Exception):
            await self._subscription.unsubscribe()


class Dispatcher:
    def __init__(
        self,
        nc: Client,
        registry: WorkerRegistry,
        accept_timeout: float,
        first_chunk_timeout: float,
        inter_chunk_timeout: float,
    ) -> None:
        self._nc = nc
        self._registry = registry
        self._accept_timeout = accept_timeout
        self._first_chunk_timeout = first_chunk_timeout
        self._inter_chunk_timeout = inter_chunk_timeout

    async def open(
        self, request: inference_pb2.InferenceRequest, countries: list[str]
    ) -> WorkerStream:
        """Give the request to a live worker in one of `countries`, or raise 503."""
        candidates = self._registry.countries_by_preference(request.route, countries)
        payload = request.SerializeToString()
        for country in candidates:
            stream = await self._offer(payload, country, request.route)
            if stream is not None:
                return stream
        raise ServiceUnavailable(
            f"No capacity for model '{request.route}' in region '{request.region}' right now; "
            "please retry shortly."
        )

    async def _offer(self, payload: bytes, country: str, route: str) -> WorkerStream | None:
        inbox = self._nc.new_inbox()
        subscription = await self._nc.subscribe(inbox)
        try:
            await self._nc.publish(infer_subject(country, route), payload, reply=inbox)
            msg = await subscription.next_msg(timeout=self._accept_timeout)
        except nats.errors.TimeoutError:
            log.warning("worker_accept_timeout", country=country, route=route)
            await subscription.unsubscribe()
            return None
        except asyncio.CancelledError:
            await subscription.unsubscribe()
            raise
        if _no_responders(msg):
            log.warning("no_responders", country=country, route=route)
            await subscription.unsubscribe()
            return None
        chunk = inference_pb2.InferenceChunk.FromString(msg.data)
        if chunk.kind != inference_pb2.CHUNK_KIND_ACCEPTED:
            log.warning("worker_rejected", country=country, reason=chunk.error_message)
            await subscription.unsubscribe()
            return None
        return WorkerStream(
            self._nc, subscription, chunk, self._first_chunk_timeout, self._inter_chunk_timeout
        )
