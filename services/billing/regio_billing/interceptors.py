"""The one place where domain errors become gRPC status codes.

Handlers raise the shared RegioError hierarchy; this interceptor answers the matching status,
binds the request's transaction_id to the log context, and hides unexpected failures behind a
generic INTERNAL (the stack trace stays in the server's log)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import psycopg
import structlog

from regio_billing.metrics import BillingMetrics
from regio_common.errors import ClientError, Conflict, NotFound

log = structlog.get_logger()

UnaryBehaviour = Callable[[Any, Any], Awaitable[Any]]

INTERNAL_MESSAGE = "internal billing error"
UNAVAILABLE_MESSAGE = "billing storage is temporarily unavailable"


def status_for(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an error a handler raised."""
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND, error.message
    if isinstance(error, Conflict):
        return grpc.StatusCode.ALREADY_EXISTS, error.message
    if isinstance(error, ClientError):  # InvalidRequest and any other client mistake
        return grpc.StatusCode.INVALID_ARGUMENT, error.message
    if isinstance(error, psycopg.OperationalError):
        # Connection trouble or an exhausted pool: worth a retry, unlike INTERNAL.
        return grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def method_name(full_method: str) -> str:
    """`/regio.billing.v1.Billing/Reserve` -> `Reserve` (the metrics' `method` label)."""
    return full_method.rpartition("/")[2] or full_method


def _aborted_code(context: Any) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _guarded(behaviour: UnaryBehaviour, method: str, metrics: BillingMetrics) -> UnaryBehaviour:
    name = method_name(method)

    async def guarded(request: Any, context: Any) -> Any:
        bound: dict[str, str] = {"rpc": method}
        transaction_id = getattr(request, "transaction_id", "")
        if transaction_id:
            bound["transaction_id"] = transaction_id
        started = time.perf_counter()
        code_name = "CANCELLED"  # unless the call ends otherwise (the client went away)
        with structlog.contextvars.bound_contextvars(**bound):
            try:
                try:
                    response = await behaviour(request, context)
                    code_name = "OK"
                    return response
                except grpc.aio.AbortError:
                    code_name = _aborted_code(context)
                    raise  # the handler already chose a status
                except Exception as error:
                    code, message = status_for(error)
                    code_name = code.name
                    if isinstance(error, psycopg.Error):
                        metrics.database_errors.inc()
                    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
                        log.exception("rpc_failed", grpc_code=code.name)
                    else:
                        log.info("rpc_refused", grpc_code=code.name, detail=message)
                await context.abort(code, message)
                raise AssertionError("context.abort() returned")  # abort always raises
            finally:
                metrics.rpc_seconds.labels(name).observe(time.perf_counter() - started)
                metrics.rpcs.labels(name, code_name).inc()

    return guarded


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Also records each call's duration and status code (`rpc_duration_seconds`, `rpc_total`)
    and the PostgreSQL errors that reach a handler's edge."""

    def __init__(self, metrics: BillingMetrics | None = None) -> None:
        self._metrics = metrics or BillingMetrics()

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # billing has only unary methods; leave anything else untouched
        return grpc.unary_unary_rpc_method_handler(
            _guarded(handler.unary_unary, handler_call_details.method, self._metrics),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
