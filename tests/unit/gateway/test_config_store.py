"""The gateway's key directory, accounts' limits and activations follow the KV entries they are
given."""

from __future__ import annotations

from regio_common.config_records import (
    AccountRecord,
    ActivationRecord,
    ApiKeyRecord,
    UsageLimits,
    hash_api_key,
)
from regio_common.subjects import account_kv_key, activation_kv_key, api_key_kv_key
from regio_gateway.config_store import ConfigStore

PEPPER = "pepper-of-this-deployment"


def _key_entry(record: ApiKeyRecord) -> bytes:
    return record.model_dump_json().encode()


def test_keys_are_found_by_peppered_hash_and_forgotten_when_deleted_or_revoked() -> None:
    store = ConfigStore(pepper=PEPPER)
    key = api_key_kv_key(hash_api_key("rg-secret", PEPPER))
    store.apply(key, _key_entry(ApiKeyRecord(key_id="k1", account_id="a1")), False)
    found = store.account_for_key("rg-secret")
    assert found is not None and found.account_id == "a1"
    assert store.account_for_key("rg-other") is None

    revoked = ApiKeyRecord(key_id="k1", account_id="a1", status="revoked")
    store.apply(key, _key_entry(revoked), False)
    assert store.account_for_key("rg-secret") is None

    store.apply(key, _key_entry(ApiKeyRecord(key_id="k1", account_id="a1")), False)
    store.apply(key, None, True)
    assert store.account_for_key("rg-secret") is None


def test_a_hash_made_with_another_pepper_does_not_authenticate() -> None:
    store = ConfigStore(pepper=PEPPER)
    unpeppered = api_key_kv_key(hash_api_key("rg-secret", ""))
    store.apply(unpeppered, _key_entry(ApiKeyRecord(key_id="k1", account_id="a1")), False)
    assert store.account_for_key("rg-secret") is None


def test_key_limits_come_with_the_key_and_account_limits_with_the_account_entry() -> None:
    store = ConfigStore(pepper=PEPPER)
    limited = ApiKeyRecord(key_id="k1", account_id="a1", limits=UsageLimits(requests_per_minute=10))
    store.apply(api_key_kv_key(hash_api_key("rg-secret", PEPPER)), _key_entry(limited), False)
    found = store.account_for_key("rg-secret")
    assert found is not None and found.limits.requests_per_minute == 10

    assert store.account_limits("a1").is_empty()
    account = AccountRecord(account_id="a1", limits=UsageLimits(daily_spend_cap_nano=5))
    store.apply(account_kv_key("a1"), account.model_dump_json().encode(), False)
    assert store.account_limits("a1").daily_spend_cap_nano == 5
    assert store.account_limits("a2").is_empty()

    store.apply(account_kv_key("a1"), None, True)  # deleted entry: no limits
    assert store.account_limits("a1").is_empty()


def test_activations_by_account_route_and_region() -> None:
    store = ConfigStore(pepper=PEPPER)
    record = ActivationRecord(account_id="a1", route="liv", region="eu", created=1)
    store.apply(activation_kv_key("a1", "liv", "eu"), record.model_dump_json().encode(), False)
    assert store.activation("a1", "liv", "eu") == record
    assert store.activation("a1", "liv", "de") is None
    assert store.activations_of("a1") == [record]
    assert store.activations_of("a2") == []


def test_a_malformed_record_is_ignored() -> None:
    store = ConfigStore(pepper=PEPPER)
    store.apply(api_key_kv_key("abc"), b"not json", False)
    assert store.account_for_key("abc") is None
    store.apply(account_kv_key("a1"), b"{}", False)
    assert store.account_limits("a1").is_empty()
