"""A key scoped to some activations is refused on the others like an unactivated route."""

from __future__ import annotations

import pytest

from regio_common.catalogue import Catalogue
from regio_common.config_records import ActivationRecord, ApiKeyRecord
from regio_common.errors import ModelNotFound, RegionMismatch
from regio_common.settings import DEFAULT_CATALOGUE
from regio_common.subjects import activation_kv_key
from regio_gateway.config_store import ConfigStore
from regio_gateway.handlers.routing import resolve_activation


def store_with(*regions: str) -> ConfigStore:
    store = ConfigStore(pepper="")
    for region in regions:
        record = ActivationRecord(account_id="a1", route="liv", region=region, created=1)
        store.apply(
            activation_kv_key("a1", "liv", region), record.model_dump_json().encode(), False
        )
    return store


def test_a_scoped_key_reaches_only_its_activations() -> None:
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    store = store_with("eu", "de")
    scoped = ApiKeyRecord(key_id="k", account_id="a1", activations=["liv/de"])
    route, activation = resolve_activation(catalogue, store, "a1", "liv", "de", scoped)
    assert (route.name, activation.region) == ("liv", "de")
    with pytest.raises(RegionMismatch) as caught:
        resolve_activation(catalogue, store, "a1", "liv", "eu", scoped)
    assert "de" in caught.value.message and "eu," not in caught.value.message


def test_a_key_scoped_away_from_every_activation_of_the_route_sees_no_model() -> None:
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    elsewhere = ApiKeyRecord(key_id="k", account_id="a1", activations=["liv/nl"])
    with pytest.raises(ModelNotFound):
        resolve_activation(catalogue, store_with("eu"), "a1", "liv", "eu", elsewhere)
    unscoped = ApiKeyRecord(key_id="k", account_id="a1")
    assert resolve_activation(catalogue, store_with("eu"), "a1", "liv", "eu", unscoped)
