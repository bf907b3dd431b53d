"""aiohttp middleware of the HTTP services (gateway, dashboard-api).

Every response gets an `x-transaction-id`; every error becomes the OpenAI error envelope. This
is the one place where errors are rendered: handlers raise `RegioError`s; anything else is
logged with its stack trace and answered with a generic 500. (Needs aiohttp, which only the
HTTP services install.)"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from regio_common.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RegioError,
    RequestTooLarge,
    ServerError,
)
from regio_common.ids import new_transaction_id

log = structlog.get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TRANSACTION_HEADER = "x-transaction-id"
TRANSACTION_KEY = web.RequestKey("transaction_id", str)
# Headers a handler wants on its answer whatever it turns out to be, success or error (e.g. the
# gateway's x-ratelimit-*); a handler that prepares its own streamed response sends them itself.
RESPONSE_HEADERS_KEY = web.RequestKey("response_headers", dict[str, str])
REQUEST_TIMEOUT_STATUS = 408


def response_headers(request: web.Request) -> dict[str, str]:
    """The request's extra response headers, to be filled in by the handler."""
    if RESPONSE_HEADERS_KEY not in request:
        request[RESPONSE_HEADERS_KEY] = {}
    return request[RESPONSE_HEADERS_KEY]


def error_response(
    error: RegioError, transaction_id: str, extra_headers: dict[str, str] | None = None
) -> web.Response:
    headers = {**(extra_headers or {}), TRANSACTION_HEADER: transaction_id}
    if error.retry_after_seconds is not None:
        headers["Retry-After"] = str(error.retry_after_seconds)
    response = web.json_response(error.envelope(), status=error.status, headers=headers)
    if error.status == REQUEST_TIMEOUT_STATUS:
        # The rest of the body was never read: the connection cannot carry another request.
        response.force_close()
    return response


def _from_http_exception(exc: web.HTTPException) -> RegioError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("Unknown URL.")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"Method {exc.method} is not allowed here.")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return RequestTooLarge("The request body is too large.", param="body")
    if exc.status < 500:
        return InvalidRequest(exc.reason)
    return ServerError("The server could not complete the request.")


@web.middleware
async def transaction_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Handlers may replace `request[TRANSACTION_KEY]` (a retried attempt gets its own id):
    the response names the id in force when it is sent."""
    request[TRANSACTION_KEY] = new_transaction_id()
    structlog.contextvars.bind_contextvars(transaction_id=request[TRANSACTION_KEY])
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers.update(request.get(RESPONSE_HEADERS_KEY, {}))
            response.headers[TRANSACTION_HEADER] = request[TRANSACTION_KEY]
        return response
    except RegioError as error:
        status = error.status
        if status >= 500:
            log.warning("request_failed", error=error.message, code=error.code)
        return error_response(error, request[TRANSACTION_KEY], request.get(RESPONSE_HEADERS_KEY))
    except web.HTTPException as exc:
        mapped = _from_http_exception(exc)
        status = mapped.status
        return error_response(mapped, request[TRANSACTION_KEY])
    except Exception:
        log.exception("unhandled_error")
        return error_response(
            ServerError("The server had an error while processing your request."),
            request[TRANSACTION_KEY],
        )
    finally:
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        structlog.contextvars.unbind_contextvars("transaction_id")
