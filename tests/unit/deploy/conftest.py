"""Each overlay is rendered once per test session (kubectl kustomize takes about a second)."""

from __future__ import annotations

import tomllib

import pytest

from tests.unit.deploy.rendering import BASE, OVERLAYS, Rendered, render


def catalogue_regions() -> dict[str, list[str]]:
    catalogue = tomllib.loads((BASE / "catalogue.production.toml").read_text())
    regions: dict[str, list[str]] = catalogue["regions"]
    return regions


@pytest.fixture(scope="session")
def overlays() -> dict[str, Rendered]:
    return {region: Rendered(render(OVERLAYS / region)) for region in sorted(catalogue_regions())}
