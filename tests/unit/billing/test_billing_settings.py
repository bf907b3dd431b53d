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
    assert settings.usage_fetch_batch == 64


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
