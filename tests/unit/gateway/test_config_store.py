"""The gateway's key directory and activations follow the KV entries they are given."""

from __future__ import annotations

from regio_common.config_records import ActivationRecord, ApiKeyRecord, hash_api_key
from regio_common.subjects import activation_kv_key, api_key_kv_key
from regio_gateway.config_store import ConfigStore


def test_keys_are_found_by_hash_and_forgotten_when_deleted_or_revoked() -> None:
    store = ConfigStore()
    key = api_key_kv_key(hash_api_key("rg-secret"))
    store.apply(key, ApiKeyRecord(key_id="k1", account_id="a1").model_dump_json().encode(), False)
    found = store.account_for_key("rg-secret")
    assert found is not None and found.account_id == "a1"
    assert store.account_for_key("rg-other") is None

    revoked = ApiKeyRecord(key_id="k1", account_id="a1", status="revoked")
    store.apply(key, revoked.model_dump_json().encode(), False)
    assert store.account_for_key("rg-secret") is None

    store.apply(key, ApiKeyRecord(key_id="k1", account_id="a1").model_dump_json().encode(), False)
    store.apply(key, None, True)
    assert store.account_for_key("rg-secret") is None


def test_activations_by_account_route_and_region() -> None:
    store = ConfigStore()
    record = ActivationRecord(account_id="a1", route="liv", region="eu", created=1)
    store.apply(activation_kv_key("a1", "liv", "eu"), record.model_dump_json().encode(), False)
    assert store.activation("a1", "liv", "eu") == record
    assert store.activation("a1", "liv", "de") is None
    assert store.activations_of("a1") == [record]
    assert store.activations_of("a2") == []


def test_a_malformed_record_is_ignored() -> None:
    store = ConfigStore()
    store.apply(api_key_kv_key("abc"), b"not json", False)
    assert store.account_for_key("abc") is None
