"""The error-mapping interceptor on a real grpc.aio server: domain errors become status codes,
unexpected ones a generic INTERNAL, and the transaction id is in the log context."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog

from regio.billing.v1 import billing_pb2
from regio_billing.errors import HoldNotFound, IdempotencyConflict
from regio_billing.interceptors import INTERNAL_MESSAGE, DomainErrorInterceptor
from regio_common.errors import InvalidRequest

SECRET = "password=hunter2 in a stack trace"


async def probe(request: billing_pb2.SettleRequest, context: Any) -> billing_pb2.Balance:
    """Raises what the request's transaction id names; otherwise echoes the log context."""
    failures: dict[str, Exception] = {
        "invalid": InvalidRequest("prompt_tokens is wrong"),
        "missing": HoldNotFound("no hold for transaction missing"),
        "reused": IdempotencyConflict("already used"),
        "crash": RuntimeError(SECRET),
    }
    if request.transaction_id in failures:
        raise failures[request.transaction_id]
    bound = structlog.contextvars.get_contextvars()
    return billing_pb2.Balance(account_id=str(bound.get("transaction_id")))


@pytest.fixture
async def probe_call() -> AsyncIterator[Any]:
    server = grpc.aio.server(interceptors=[DomainErrorInterceptor()])
    handler = grpc.unary_unary_rpc_method_handler(
        probe,
        request_deserializer=billing_pb2.SettleRequest.FromString,
        response_serializer=billing_pb2.Balance.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Probe", {"Call": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel.unary_unary(
            "/test.Probe/Call",
            request_serializer=billing_pb2.SettleRequest.SerializeToString,
            response_deserializer=billing_pb2.Balance.FromString,
        )
    finally:
        await channel.close()
        await server.stop(None)


@pytest.mark.parametrize(
    ("transaction_id", "code", "details"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "prompt_tokens is wrong"),
        ("missing", grpc.StatusCode.NOT_FOUND, "no hold for transaction missing"),
        ("reused", grpc.StatusCode.ALREADY_EXISTS, "already used"),
        ("crash", grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE),
    ],
)
async def test_errors_become_status_codes(
    probe_call: Any, transaction_id: str, code: grpc.StatusCode, details: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await probe_call(billing_pb2.SettleRequest(transaction_id=transaction_id))

    assert failed.value.code() == code
    assert failed.value.details() == details
    assert SECRET not in (failed.value.details() or "")


async def test_the_transaction_id_is_bound_while_handling(probe_call: Any) -> None:
    response = await probe_call(billing_pb2.SettleRequest(transaction_id="txn-bound"))

    assert response.account_id == "txn-bound"
    assert "transaction_id" not in structlog.contextvars.get_contextvars()
