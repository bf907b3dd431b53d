"""The route catalogue: regions with their countries, and the routes (model offerings) with
their limits, capabilities and prices. Loaded from a TOML file shared by every service."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from regio_common.money import eur_to_nano


class Capabilities(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thinking: bool = False
    tools: bool = False
    vision: bool = False
    audio: bool = False
    json_mode: bool = False
    token_budget: bool = False


class ModelSource(BaseModel):
    """Where the worker finds the GGUF: a file path, or a PyPI package that assembles one."""

    model_config = ConfigDict(extra="forbid")

    gguf_path: Path | None = None
    gguf_package: str | None = None
    chat_format: str | None = Field(
        None, description="llama-cpp-python chat format (e.g. 'gemma'); None: the GGUF's template"
    )
    mmproj_path: Path | None = Field(
        None,
        description="GGUF of the model's multimodal projector (llama.cpp mtmd), needed to read "
        "images and audio; relative: in the worker's models directory. None: text only",
    )

    thinking_start: str | None = Field(
        None,
        min_length=1,
        description="The text that opens the model's reasoning (e.g. '<think>'); with "
        "thinking_end. None: the model does not reason",
    )
    thinking_end: str | None = Field(
        None, min_length=1, description="The text that closes the reasoning (e.g. '</think>')"
    )
    thinking_switch: str = Field(
        "",
        description="Text put first in the system prompt when the model is to reason, for "
        "models that think only when told (Gemma 4: '<|think|>'); empty: none needed",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSource:
        if (self.gguf_path is None) == (self.gguf_package is None):
            raise ValueError("a model source needs exactly one of gguf_path or gguf_package")
        return self

    @model_validator(mode="after")
    def _thinking_markers_paired(self) -> ModelSource:
        if (self.thinking_start is None) != (self.thinking_end is None):
            raise ValueError("thinking_start and thinking_end go together")
        if self.thinking_switch and self.thinking_start is None:
            raise ValueError("thinking_switch needs thinking_start and thinking_end")
        return self

    @property
    def reasons(self) -> bool:
        """The model marks its reasoning (thinking_start / thinking_end are set)."""
        return self.thinking_start is not None and self.thinking_end is not None


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    base_models: list[str]
    source: ModelSource
    context_length: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    default_max_tokens: int = Field(4096, gt=0)
    input_price_eur_per_mtok: Decimal
    output_price_eur_per_mtok: Decimal
    regions: list[str]
    capabilities: Capabilities = Capabilities()
    supported_parameters: list[str] = Field(default_factory=list)
    # Most prompt tokens one image (a PDF page is one) and one audio clip become on this route:
    # the gateway's credit hold counts them, and the worker refuses an item above its bound (and
    # asks a projector with dynamic resolution for at most this many tokens per image).
    tokens_per_image: int = Field(1024, gt=0)
    tokens_per_audio_clip: int = Field(1500, gt=0)
    owned_by: str = "regio"
    created: int = 1_767_225_600  # 2026-01-01, when the route was first offered

    @model_validator(mode="after")
    def _thinking_has_markers(self) -> Route:
        # The worker splits reasoning from the answer by the markers, and sets the effort by
        # opening or closing the reasoning block in the prompt.
        if self.capabilities.thinking and not self.source.reasons:
            raise ValueError(
                f"route {self.name} has the capability 'thinking': its source needs "
                "thinking_start and thinking_end (how the model marks its reasoning)"
            )
        return self

    @property
    def input_price_nano(self) -> int:
        """nano-EUR per 1M input tokens."""
        return eur_to_nano(self.input_price_eur_per_mtok)

    @property
    def output_price_nano(self) -> int:
        """nano-EUR per 1M output tokens."""
        return eur_to_nano(self.output_price_eur_per_mtok)


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    regions: dict[str, list[str]]
    routes: dict[str, Route]

    @field_validator("routes", mode="before")
    @classmethod
    def _name_routes(cls, routes: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        return {name: {"name": name, **spec} for name, spec in routes.items()}

    @model_validator(mode="after")
    def _regions_known(self) -> Catalogue:
        for route in self.routes.values():
            unknown = set(route.regions) - set(self.regions)
            if unknown:
                raise ValueError(f"route {route.name} names unknown regions {sorted(unknown)}")
        return self

    @model_validator(mode="after")
    def _aliases_unambiguous(self) -> Catalogue:
        owners: dict[str, str] = {}
        for route in self.routes.values():
            for alias in route.base_models:
                if alias in self.routes or owners.setdefault(alias, route.name) != route.name:
                    raise ValueError(f"model name {alias!r} would name two routes")
        return self

    def countries(self, region: str) -> list[str]:
        return self.regions.get(region, [])

    def route_for_model(self, model: str) -> Route | None:
        """A route by its name, or by a provider-prefixed base model (`google/gemma-3-270m`)."""
        route = self.routes.get(model)
        if route is not None:
            return route
        return next((r for r in self.routes.values() if model in r.base_models), None)

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        with path.open("rb") as handle:
            return cls.model_validate(tomllib.load(handle))
