"""Records written by an older dashboard still parse; key scopes decide what a key may use."""

from __future__ import annotations

from regio_common.config_records import ActivationRecord, ApiKeyRecord


def test_an_old_activation_record_gets_the_default_thinking_settings() -> None:
    old = b'{"account_id": "a", "route": "liv", "region": "eu", "created": 1}'
    record = ActivationRecord.model_validate_json(old)
    assert record.thinking.default_effort == "medium"
    assert record.thinking.reasoning_output == "reasoning_content"


def test_an_unscoped_key_may_use_every_activation_and_a_scoped_one_only_its_own() -> None:
    unscoped = ApiKeyRecord.model_validate_json(b'{"key_id": "k", "account_id": "a"}')
    assert unscoped.may_use("liv", "eu") and unscoped.may_use("liv", "de")
    scoped = ApiKeyRecord(key_id="k", account_id="a", activations=["liv/de"])
    assert scoped.may_use("liv", "de")
    assert not scoped.may_use("liv", "eu") and not scoped.may_use("other", "de")
