"""The OpenAPI 3.1 document of the dashboard API, built from the aiohttp route table and the
pydantic models of each handler's `@operation` (never written by hand).

`python -m regio_dashboard.openapi > services/dashboard-api/openapi.json` regenerates the
committed copy; a unit test checks that it is current."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from aiohttp import web

from regio_common.openapi_schemas import SchemaCollector, bearer_document
from regio_dashboard.operations import Operation, operation_of
from regio_dashboard.schemas import ErrorEnvelope

PATH_PARAMETER = re.compile(r"\{([^}/]+)\}")
# Ids, route and region names: what the dashboard issues and the catalogue may name.
PATH_PARAMETER_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,100}$"}
ERROR_DESCRIPTIONS = {
    400: "Malformed request (body, parameter or cursor).",
    401: "Missing, malformed, unknown or revoked credential.",
    403: "The credential's role may not do this.",
    404: "No such object within the caller's reach.",
    409: "Conflicts with the current state (or a reused idempotency key).",
    422: "A value breaks a rule of the resource (e.g. a limit).",
    503: "A dependency (billing) is unavailable.",
}
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Retries with the same key and body get the first response again (for a created "
        "secret: a 409, as secrets are shown once); the same key with another body is a 422."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$"},
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _undescribed(handler: Any) -> Operation:
    """A route whose handler has no `@operation`: documented generically, so it is never
    missing from the document."""
    summary = (handler.__doc__ or handler.__name__).strip().splitlines()[0]
    return Operation(summary=summary, tag="other", response=None)


def _operation_object(
    method: str, path: str, handler: Any, described: Operation, schemas: SchemaCollector
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": PATH_PARAMETER_SCHEMA}
        for name in PATH_PARAMETER.findall(path)
    ]
    parameters += [
        {"name": q.name, "in": "query", "required": False, "description": q.description}
        | {"schema": q.schema}
        for q in described.query
    ]
    if described.idempotent:
        parameters.append(IDEMPOTENCY_HEADER)
    success: dict[str, Any] = {"description": described.summary}
    success["content"] = _json_content(
        schemas.ref(described.response, "serialization")
        if described.response is not None
        else {"type": "object"}
    )
    responses: dict[str, Any] = {str(described.status): success}
    for status in sorted(set(described.errors)):
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS.get(status, "Error."),
            "content": _json_content(schemas.ref(ErrorEnvelope, "serialization")),
        }
    roles = "admin" if described.admin_only else "admin or the account's owner"
    body: dict[str, Any] = {
        "operationId": handler.__name__,
        "summary": described.summary,
        "tags": [described.tag],
        "description": described.description
        or (f"Role: {roles}." if described.authenticated else "No credential needed."),
        "parameters": parameters,
        "responses": responses,
    }
    if not described.authenticated:
        body["security"] = []
    if described.body is not None:
        body["requestBody"] = {
            "required": False,
            "content": _json_content(schemas.ref(described.body, "validation")),
        }
    elif method in ("POST", "PUT", "PATCH") and operation_of(handler) is None:
        body["requestBody"] = {"required": False, "content": _json_content({"type": "object"})}
    return body


def build_document(app: web.Application) -> dict[str, Any]:
    schemas = SchemaCollector()
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue  # aiohttp adds a HEAD for each GET
        path = route.resource.canonical
        described = operation_of(route.handler) or _undescribed(route.handler)
        item = _operation_object(route.method, path, route.handler, described, schemas)
        if item["operationId"] in operation_ids:
            item["operationId"] = f"{route.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path)}"
        operation_ids.add(item["operationId"])
        paths.setdefault(path, {})[route.method.lower()] = item
    return bearer_document(
        title="Regio dashboard API",
        description=(
            "Accounts, route activations, keys and credits of Regio. Errors use the envelope "
            '`{"error": {"message", "type", "code", "param"}}`; lists are cursor-paged.'
        ),
        paths=paths,
        schemas=schemas,
        bearer_description="The admin token, or an account owner's `rgm-` token.",
    )


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def routed_app() -> web.Application:
    """An application with every route and no state: enough to describe the API."""
    from regio_dashboard.handlers import add_routes

    app = web.Application()
    add_routes(app)
    return app


def main() -> None:
    sys.stdout.write(render(build_document(routed_app())))


if __name__ == "__main__":
    main()
