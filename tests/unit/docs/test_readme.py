"""The README documents every setting a service reads."""

from __future__ import annotations

import pytest
from pydantic_settings import BaseSettings

from regio_billing.settings import BillingSettings
from regio_common.settings import PROJECT_ROOT
from regio_dashboard.settings import DashboardSettings
from regio_devstack.settings import DevstackSettings
from regio_gateway.settings import GatewaySettings
from regio_worker.settings import WorkerSettings


@pytest.mark.parametrize(
    "settings_class",
    [GatewaySettings, BillingSettings, WorkerSettings, DashboardSettings, DevstackSettings],
)
def test_every_setting_is_in_the_readme(settings_class: type[BaseSettings]) -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [
        f"REGIO_{name.upper()}"
        for name in settings_class.model_fields
        if f"`REGIO_{name.upper()}`" not in readme
    ]
    assert missing == []
