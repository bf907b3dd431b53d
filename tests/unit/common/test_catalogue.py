"""Both shipped catalogues load, and mistakes in a catalogue are caught at load time."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from regio_common.catalogue import Catalogue
from regio_common.settings import DEFAULT_CATALOGUE, PROJECT_ROOT


def test_shipped_catalogues_load() -> None:
    dev = Catalogue.load(DEFAULT_CATALOGUE)
    assert list(dev.routes) == ["liv"]
    assert dev.countries("eu") == ["de", "nl", "fr", "fi"]
    production = Catalogue.load(
        PROJECT_ROOT / "deploy" / "k8s" / "base" / "catalogue.production.toml"
    )
    assert sorted(production.routes) == ["clara", "liv", "nikola"]
    assert production.routes["nikola"].output_price_nano == 319_000_000


def test_unknown_region_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[regions]\neu = ["de"]\n[routes.x]\nbase_models = ["m"]\n'
        'source = { gguf_path = "/m.gguf" }\ncontext_length = 10\nmax_output_tokens = 5\n'
        'input_price_eur_per_mtok = "1"\noutput_price_eur_per_mtok = "1"\nregions = ["mars"]\n'
    )
    with pytest.raises(ValidationError, match="unknown regions"):
        Catalogue.load(path)


def test_routes_are_found_by_name_or_base_model() -> None:
    dev = Catalogue.load(DEFAULT_CATALOGUE)
    assert dev.route_for_model("liv") is dev.routes["liv"]
    assert dev.route_for_model("google/gemma-3-270m") is dev.routes["liv"]
    assert dev.route_for_model("gemma-3-270m") is None


def test_a_base_model_naming_two_routes_is_refused(tmp_path: Path) -> None:
    route = (
        'base_models = ["vendor/m"]\nsource = { gguf_path = "/m.gguf" }\ncontext_length = 10\n'
        'max_output_tokens = 5\ninput_price_eur_per_mtok = "1"\noutput_price_eur_per_mtok = "1"\n'
        'regions = ["eu"]\n'
    )
    path = tmp_path / "twice.toml"
    path.write_text(f'[regions]\neu = ["de"]\n[routes.a]\n{route}[routes.b]\n{route}')
    with pytest.raises(ValidationError, match="would name two routes"):
        Catalogue.load(path)
