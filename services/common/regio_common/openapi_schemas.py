"""Component schemas for the OpenAPI documents the HTTP services build from pydantic models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

REF_TEMPLATE = "#/components/schemas/{model}"


class SchemaCollector:
    """Component schemas of the models the operations use, each under its model's name."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(
        self, model: type[BaseModel], mode: Literal["validation", "serialization"]
    ) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
        for name, definition in schema.pop("$defs", {}).items():
            self._add(name, definition)
        self._add(model.__name__, schema)
        return {"$ref": REF_TEMPLATE.format(model=model.__name__)}

    def _add(self, name: str, schema: dict[str, Any]) -> None:
        known = self.schemas.setdefault(name, schema)
        if known != schema:
            raise ValueError(f"two different schemas are both named {name!r}")


def bearer_document(
    *,
    title: str,
    description: str,
    paths: dict[str, Any],
    schemas: SchemaCollector,
    bearer_description: str,
) -> dict[str, Any]:
    """An OpenAPI 3.1 document whose every operation takes a bearer token."""
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1", "description": description},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": bearer_description}
            },
        },
    }
