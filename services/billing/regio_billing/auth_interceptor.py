"""Who may call billing: a bearer token per client, and a method allowlist per client.

Clients send `authorization: Bearer <token>` (regio_common.billing_rpc.BillingRpcClient). The
token is compared with every configured one in constant time (hmac.compare_digest, and no early
exit), so timing reveals neither a token nor which client matched. The `gateway` client, which
faces the internet's traffic, may only move holds and read balances; every other client (the
dashboard) may call everything. Tokens are never logged."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import structlog

from regio_billing.interceptors import method_name
from regio_billing.metrics import BillingMetrics

log = structlog.get_logger()

AUTHORIZATION = "authorization"
BEARER = "Bearer "
UNAUTHENTICATED_MESSAGE = "missing or invalid billing credentials"
PERMISSION_DENIED_MESSAGE = "this billing client may not call this method"

GATEWAY_CLIENT = "gateway"
# The gateway's methods; other clients have no allowlist.
ALLOWED_METHODS: Mapping[str, frozenset[str]] = {
    GATEWAY_CLIENT: frozenset({"Reserve", "ReserveMany", "Release", "Settle", "GetBalance"}),
}
UNKNOWN_CLIENT = "unknown"


def bearer_token(metadata: Any) -> str:
    """The bearer token of a call's metadata; empty when there is none."""
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value.startswith(BEARER):
            return value[len(BEARER) :]
    return ""


def client_of(token: str, tokens: Mapping[str, bytes]) -> str | None:
    """The name of the client whose token this is, or None."""
    presented = token.encode()
    found: str | None = None
    for name, expected in tokens.items():
        if hmac.compare_digest(presented, expected) and presented:
            found = name  # keep comparing: the time taken does not depend on the match
    return found


def may_call(client: str, method: str) -> bool:
    allowed = ALLOWED_METHODS.get(client)
    return allowed is None or method in allowed


def _refusal(code: grpc.StatusCode, message: str) -> Any:
    async def refuse(request: Any, context: Any) -> Any:
        await context.abort(code, message)

    # No deserializer: a refused call's request is never parsed.
    return grpc.unary_unary_rpc_method_handler(refuse)


class BillingAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Placed after DomainErrorInterceptor, so refused calls are also counted and timed there."""

    def __init__(self, tokens: Mapping[str, str], metrics: BillingMetrics | None = None) -> None:
        if not tokens:
            raise ValueError("no client tokens: leave the interceptor out to disable auth")
        self._tokens = {name: token.encode() for name, token in tokens.items()}
        self._metrics = metrics or BillingMetrics()
        # Zero until the first refusal.
        self._metrics.auth_refusals.labels("unauthenticated", UNKNOWN_CLIENT)
        for name in self._tokens:
            self._metrics.auth_refusals.labels("permission_denied", name)

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        method = method_name(handler_call_details.method)
        client = client_of(bearer_token(handler_call_details.invocation_metadata), self._tokens)
        if client is None:
            self._metrics.auth_refusals.labels("unauthenticated", UNKNOWN_CLIENT).inc()
            log.warning("billing_call_unauthenticated", rpc=method)
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        if not may_call(client, method):
            self._metrics.auth_refusals.labels("permission_denied", client).inc()
            log.warning("billing_call_forbidden", rpc=method, client=client)
            return _refusal(grpc.StatusCode.PERMISSION_DENIED, PERMISSION_DENIED_MESSAGE)
        return await continuation(handler_call_details)
