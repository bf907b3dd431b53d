"""`GET /v1/models`: the caller's activated routes in the endpoint's region."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from regio_common.catalogue import Capabilities, Route


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str
    created: int
    base_models: list[str]
    context_length: int
    max_tokens: int
    capabilities: Capabilities
    supported_parameters: list[str]

    @classmethod
    def from_route(cls, route: Route, created: int) -> Model:
        return cls(
            id=route.name,
            owned_by=route.owned_by,
            created=created,
            base_models=route.base_models,
            context_length=route.context_length,
            max_tokens=route.max_output_tokens,
            capabilities=route.capabilities,
            supported_parameters=route.supported_parameters,
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
