"""Billing settings: defaults, REGIO_ variables, and a description for every field."""

from __future__ import annotations

import pytest

from regio_billing.settings import BillingSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BillingSettings.model_fields:
        monkeypatch.delenv(f"REGIO_{name.upper()}", raising=False)

    settings = BillingSettings()

    assert settings.billing_listen_address == "127.0.0.1:50051"
    assert settings.hold_sweep_interval_seconds == 5.0
    assert settings.usage_fetch_batch == 128


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIO_BILLING_LISTEN_ADDRESS", "0.0.0.0:6000")
    monkeypatch.setenv("REGIO_HOLD_SWEEP_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("REGIO_USAGE_FETCH_BATCH", "8")

    settings = BillingSettings()

    assert settings.billing_listen_address == "0.0.0.0:6000"
    assert settings.hold_sweep_interval_seconds == 0.5
    assert settings.usage_fetch_batch == 8


def test_every_setting_is_described() -> None:
    undescribed = [
        name for name, field in BillingSettings.model_fields.items() if not field.description
    ]

    assert undescribed == []


def test_client_tokens_are_read_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIO_BILLING_CLIENT_TOKENS", '{"gateway": "g-1", "dashboard": "d-2"}')

    tokens = BillingSettings().billing_client_tokens

    assert {name: token.get_secret_value() for name, token in tokens.items()} == {
        "gateway": "g-1",
        "dashboard": "d-2",
    }
    assert "g-1" not in repr(BillingSettings())  # secrets stay out of logs and tracebacks


def test_no_client_tokens_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGIO_BILLING_CLIENT_TOKENS", raising=False)

    assert BillingSettings().billing_client_tokens == {}


@pytest.mark.parametrize(
    "tokens",
    ['{"gateway": ""}', '{"gateway": "same", "dashboard": "same"}', '{"": "token"}'],
)
def test_unusable_client_tokens_are_refused(monkeypatch: pytest.MonkeyPatch, tokens: str) -> None:
    monkeypatch.setenv("REGIO_BILLING_CLIENT_TOKENS", tokens)

    with pytest.raises(ValueError):
        BillingSettings()
