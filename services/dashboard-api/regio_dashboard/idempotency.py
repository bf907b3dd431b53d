"""`Idempotency-Key` on creating calls: a retry gets the first response instead of a second
object.

The key is scoped to the caller (the admin, or one account's owner) and the operation (method
and path). The first request with a key claims it; its successful (2xx) response is stored and
replayed to a retry with the same body. Another body under the same key is a 422
`idempotency_key_reused`; a retry while the first request still runs is a 409. A failed first
request frees the key, so the client may retry it. Responses carrying a secret (API keys,
management tokens) are stored without it: a secret is shown once, so their replay is a 409
`idempotency_key_reused` naming the object that was created."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from regio_common.errors import Conflict, InvalidRequest, UnprocessableEntity
from regio_dashboard.handlers.common import caller
from regio_dashboard.idempotency_store import IdempotencyStore, StoredResponse
from regio_dashboard.operations import operation_of
from regio_dashboard.state import STATE_KEY

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 200
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_hash(raw: bytes) -> str:
    """The body's fingerprint: equal JSON documents hash alike, whatever their key order."""
    try:
        canonical = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = raw
    return hashlib.sha256(canonical).hexdigest()


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise InvalidRequest(
            f"Invalid Idempotency-Key: 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            param=IDEMPOTENCY_HEADER,
        )
    return key


def _withhold_secret(body: str, field: str) -> str:
    document = json.loads(body)
    document.pop(field, None)
    return json.dumps(document)


def _replay(stored: StoredResponse, hashed: str) -> web.Response:
    if stored.request_hash != hashed:
        raise UnprocessableEntity(
            "This Idempotency-Key was already used with a different request body.",
            param=IDEMPOTENCY_HEADER,
            code="idempotency_key_reused",
        )
    if stored.status is None or stored.body is None:
        raise Conflict(
            "A request with this Idempotency-Key is still in progress; retry later.",
            param=IDEMPOTENCY_HEADER,
            code="idempotency_request_in_progress",
        )
    if stored.secret_withheld:
        created = json.loads(stored.body)
        raise Conflict(
            f"This Idempotency-Key already created {created.get('object', 'an object')} "
            f"'{created.get('id', '')}'. Its secret was shown only once, in that first response; "
            "revoke it and create a new one if the secret was lost.",
            param=IDEMPOTENCY_HEADER,
            code="idempotency_key_reused",
        )
    return web.Response(
        text=stored.body,
        status=stored.status,
        content_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


async def run_idempotently(
    request: web.Request, handler: Handler, store: IdempotencyStore
) -> web.StreamResponse:
    """Run `handler` under the request's Idempotency-Key (if the operation accepts one)."""
    described = operation_of(request.match_info.handler)
    if described is None or not described.idempotent:
        return await handler(request)
    key = idempotency_key(request)
    if key is None:
        return await handler(request)
    who = await caller(request)  # a 401 before any lookup: keys are per caller
    principal = who.principal
    scope = f"{principal.role}:{principal.account_id or '-'}:{request.method} {request.path}"
    hashed = request_hash(await request.read())
    stored = await store.claim(scope, key, hashed)
    if stored is not None:
        return _replay(stored, hashed)
    try:
        response = await handler(request)
    except BaseException:
        await store.release(scope, key)
        raise
    if not isinstance(response, web.Response) or not 200 <= response.status < 300:
        await store.release(scope, key)
        return response
    body = response.text or ""
    withheld = described.secret_field is not None
    if withheld:
        body = _withhold_secret(body, str(described.secret_field))
    await store.complete(scope, key, response.status, body, withheld)
    return response


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await run_idempotently(request, handler, request.app[STATE_KEY].idempotency)
