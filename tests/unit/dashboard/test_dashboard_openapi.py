"""The OpenAPI document: generated from the route table and models, committed, complete."""

from __future__ import annotations

import json
from typing import Any

from regio_common.settings import PROJECT_ROOT
from regio_dashboard.openapi import build_document, render, routed_app

COMMITTED = PROJECT_ROOT / "services" / "dashboard-api" / "openapi.json"
AUTHENTICATED_ERRORS = {"401", "403", "404", "409", "422"}


def document() -> dict[str, Any]:
    return build_document(routed_app())


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
    ]


def test_the_committed_document_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == render(document()), (
        "services/dashboard-api/openapi.json is stale: regenerate it with "
        "`python -m regio_dashboard.openapi > services/dashboard-api/openapi.json`"
    )


def test_every_route_of_the_app_is_described() -> None:
    app = routed_app()
    doc = build_document(app)
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert {(method, path) for method, path, _ in operations(doc)} == routed
    assert ("POST", "/admin/v1/accounts/{account_id}/adjustments") in routed


def test_every_authenticated_operation_lists_its_errors_with_the_envelope() -> None:
    doc = document()
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for method, path, op in operations(doc):
        if op.get("security") == []:
            continue
        assert set(op["responses"]) >= AUTHENTICATED_ERRORS, (method, path)
        for status in AUTHENTICATED_ERRORS:
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == envelope, (method, path, status)
    error = doc["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"message", "type", "code", "param"}


def test_every_reference_resolves_and_the_spec_is_3_1() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    text = json.dumps(doc)
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in doc["components"]["schemas"], name


def test_creating_calls_accept_an_idempotency_key_and_lists_a_cursor() -> None:
    doc = document()
    for method, path, op in operations(doc):
        names = {p["name"] for p in op["parameters"]}
        if method == "POST" and op["responses"].get("201"):
            assert "Idempotency-Key" in names, path
        if op["operationId"].startswith("list_"):
            assert {"limit", "after"} <= names, path


def test_the_activation_request_describes_thinking_and_the_key_its_scope() -> None:
    schemas = document()["components"]["schemas"]
    thinking = schemas["ThinkingSettingsBody"]["properties"]
    assert thinking["default_effort"]["enum"] == ["none", "low", "medium", "high"]
    assert thinking["reasoning_output"]["enum"] == ["reasoning_content", "think_tags", "hidden"]
    assert "activations" in schemas["CreateApiKey"]["properties"]
    assert "key" in schemas["CreatedApiKey"]["required"]
    assert "key" not in schemas["ApiKeyOut"]["properties"]
