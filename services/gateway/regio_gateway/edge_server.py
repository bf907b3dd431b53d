"""The HTTP server of the public listener: aiohttp's connection limits from the settings, and
the OpenAI error envelope also for requests aiohttp's parser rejects before any handler runs.

aiohttp answers an unparsable request (an over-long request line or header, too many headers,
an invalid header character, a bad Content-Length or chunked encoding) itself, with a plain-text
400, and logs it with a traceback at error level. Here its connection handler renders the
envelope instead (still 400 `invalid_value`, with an `x-transaction-id`, connection closed) and
logs one line without the offending bytes, so that hostile input can neither reach a client in a
non-envelope answer nor flood the log. This hooks into aiohttp's request handler class (the one
place it offers); tests/unit/gateway/test_edge_server.py pins the behaviour across upgrades."""

from __future__ import annotations

from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from regio_common.errors import InvalidRequest, RegioError, ServerError
from regio_common.http_middleware import error_response
from regio_common.ids import new_transaction_id
from regio_gateway.settings import GatewaySettings

log = structlog.get_logger()


class _EnvelopeRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # a response is under way: only closing is left
            raise ConnectionError("Response is sent already, cannot send an error")
        error: RegioError
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            log.error("http_handler_failed", exc_info=exc)
            error = ServerError("The server had an error while processing your request.")
        else:
            reason = (
                "a request line or header is too long"
                if isinstance(exc, LineTooLong)
                else "it is malformed or has too many headers"
            )
            log.info(
                "http_request_unparsable",
                status=status,
                error=type(exc).__name__,
                client_address=request.remote,
            )
            error = InvalidRequest(f"The HTTP request could not be read: {reason}.")
        response = error_response(error, new_transaction_id())
        response.force_close()
        return response


class _EnvelopeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer parse errors with the envelope."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _EnvelopeServer  # same state, our connection handler class
        return server


def make_runner(app: web.Application, settings: GatewaySettings) -> GatewayRunner:
    return GatewayRunner(
        app,
        # A client that disconnects cancels its request (and its generation).
        handler_cancellation=True,
        access_log=None,
        # Also the time a new connection has to send its first request's headers (slowloris).
        keepalive_timeout=settings.keepalive_timeout_seconds,
        max_line_size=settings.max_request_line_bytes,
        max_field_size=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )
