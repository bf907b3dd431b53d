"""Usage limits as the dashboard takes them: the request body's rules (400 naming the field),
EUR spend caps converted to exact nano-EUR, what gateways are shown, and the CLI's merge."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from regio_common.config_records import UsageLimits
from regio_common.errors import InvalidRequest
from regio_dashboard.cli import changed_limits, limits_summary, parser
from regio_dashboard.limits_store import describe_limits
from regio_dashboard.schemas import LimitsOut, UsageLimitsBody
from regio_dashboard.store import Account, AccountKeys

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"requests_per_minute": -1}, "requests_per_minute"),
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"tokens_per_minute": 1.5}, "tokens_per_minute"),
        ({"tokens_per_minute": 10.0}, "tokens_per_minute"),
        ({"max_concurrent_requests": "3"}, "max_concurrent_requests"),
        ({"max_concurrent_requests": True}, "max_concurrent_requests"),
        ({"requests_per_minute": 2**31}, "requests_per_minute"),
        ({"daily_spend_cap_eur": "abc"}, "daily_spend_cap_eur"),
        ({"daily_spend_cap_eur": "0"}, "daily_spend_cap_eur"),
        ({"daily_spend_cap_eur": "-5"}, "daily_spend_cap_eur"),
        ({"monthly_spend_cap_eur": "NaN"}, "monthly_spend_cap_eur"),
        ({"monthly_spend_cap_eur": "0.0000000001"}, "monthly_spend_cap_eur"),
        ({"monthly_spend_cap_eur": "1e12"}, "monthly_spend_cap_eur"),
        ({"requests_per_hour": 5}, "requests_per_hour"),
    ],
)
def test_an_invalid_limit_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        UsageLimitsBody.parse(body)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_spend_caps_in_eur_become_exact_nano_eur() -> None:
    body = UsageLimitsBody.parse(
        {
            "requests_per_minute": 60,
            "daily_spend_cap_eur": "2.5",
            "monthly_spend_cap_eur": "0.000000001",
        }
    )
    assert body.usage_limits() == UsageLimits(
        requests_per_minute=60, daily_spend_cap_nano=2_500_000_000, monthly_spend_cap_nano=1
    )


def test_omitted_or_null_fields_are_no_limit() -> None:
    assert UsageLimitsBody.parse({}).usage_limits().is_empty()
    nulls = dict.fromkeys(UsageLimitsBody.model_fields)
    assert UsageLimitsBody.parse(nulls).usage_limits().is_empty()


def test_limits_are_answered_in_the_shape_they_are_set() -> None:
    limits = UsageLimits(tokens_per_minute=1000, daily_spend_cap_nano=2_500_000_000)
    shown = LimitsOut.of_key("acct_1", "key_1", limits).model_dump()
    assert shown["daily_spend_cap_eur"] == "2.5" and shown["monthly_spend_cap_eur"] is None
    assert (shown["scope"], shown["account_id"], shown["key_id"]) == ("key", "acct_1", "key_1")
    # What a GET answers can be PUT back unchanged.
    fields = {name: shown[name] for name in UsageLimitsBody.model_fields}
    assert UsageLimitsBody.parse(fields).usage_limits() == limits


def test_the_audit_log_spells_out_every_limit() -> None:
    limits = UsageLimits(requests_per_minute=60, daily_spend_cap_nano=5_000_000_000)
    assert describe_limits(limits) == (
        "requests_per_minute=60, tokens_per_minute=none, max_concurrent_requests=none, "
        "daily_spend_cap_eur=5, monthly_spend_cap_eur=none"
    )


def account(status: str, limits: UsageLimits) -> Account:
    return Account("acct_1", "acme", status, NOW, limits)


def test_gateways_see_an_account_record_only_while_it_has_limits_and_is_active() -> None:
    limited = UsageLimits(max_concurrent_requests=2)
    assert AccountKeys(account("active", limited), []).account_limits() == limited
    assert AccountKeys(account("active", UsageLimits()), []).account_limits() is None
    assert AccountKeys(account("suspended", limited), []).account_limits() is None
    assert AccountKeys(None, []).account_limits() is None


def test_the_cli_changes_only_the_limits_given() -> None:
    current = {
        "requests_per_minute": 60,
        "tokens_per_minute": None,
        "max_concurrent_requests": 4,
        "daily_spend_cap_eur": "5",
        "monthly_spend_cap_eur": None,
    }
    options = ["--tokens-per-minute", "1000", "--max-concurrent-requests", "none"]
    options += ["--monthly-spend-cap-eur", "50.5"]
    args = parser().parse_args(["admin", "limits", "set", "acct_1", "--key", "key_1", *options])
    assert args.key == "key_1"
    assert changed_limits(current, args) == {
        "requests_per_minute": 60,
        "tokens_per_minute": 1000,
        "max_concurrent_requests": None,
        "daily_spend_cap_eur": "5",
        "monthly_spend_cap_eur": "50.5",
    }
    assert limits_summary(changed_limits(current, args)) == (
        "rpm=60,tpm=1000,eur/day=5,eur/month=50.5"
    )
    assert limits_summary(None) == "none"
