"""Usage limits through the dashboard API against the running stack: who may set them, how they
are answered and audited, and the records gateways receive in the config bucket."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from nats.js.errors import KeyNotFoundError

from regio_common.config_records import AccountRecord, ApiKeyRecord, UsageLimits, hash_api_key
from regio_common.subjects import CONFIG_BUCKET, account_kv_key, api_key_kv_key
from regio_devstack.stack import Stack
from tests.e2e.test_dashboard_api import call
from tests.e2e.test_dashboard_cli import regio
from tests.e2e.test_dashboard_roles import new_owner

NO_LIMITS = {
    "requests_per_minute": None,
    "tokens_per_minute": None,
    "max_concurrent_requests": None,
    "daily_spend_cap_eur": None,
    "monthly_spend_cap_eur": None,
}


def read_entry(stack: Stack, key: str) -> bytes | None:
    """The value of one entry of the config bucket; None when it is absent or deleted."""

    async def read() -> bytes | None:
        nc = await nats.connect(stack.nats_url_for("ops"))
        try:
            kv = await nc.jetstream().key_value(CONFIG_BUCKET)
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return None
            return entry.value or None
        finally:
            await nc.close()

    return asyncio.run(read())


def account_record(stack: Stack, account_id: str) -> AccountRecord | None:
    key = account_kv_key(account_id)
    entry = read_entry(stack, key)
    return AccountRecord.model_validate_json(entry) if entry else None


def key_record(stack: Stack, api_key: str) -> ApiKeyRecord:
    """The record of one key, read by its bucket key: the key's hash under the stack's pepper
    (one direct read; listing a bucket of hundreds of keys is slower and was seen to miss one)."""
    entry_key = api_key_kv_key(hash_api_key(api_key, stack.credentials.api_key_pepper))
    entry = read_entry(stack, entry_key)
    assert entry is not None, "no record of the key in the config bucket"
    return ApiKeyRecord.model_validate_json(entry)


def audit_of(stack: Stack, account_id: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = call(stack, "GET", f"/admin/v1/audit?account_id={account_id}")[
        1
    ]["data"]
    return entries


def test_the_admin_sets_account_limits_the_owner_reads_them_and_gateways_receive_them(
    stack: Stack,
) -> None:
    owner = new_owner(stack)
    path = f"/admin/v1/accounts/{owner.account_id}/limits"
    status, limits = call(stack, "GET", path, token=owner.token)
    assert status == 200 and {k: limits[k] for k in NO_LIMITS} == NO_LIMITS
    assert account_record(stack, owner.account_id) is None

    wanted = {"requests_per_minute": 60, "daily_spend_cap_eur": "2.5"}
    status, limits = call(stack, "PUT", path, wanted)
    assert status == 200
    assert limits == {
        **NO_LIMITS,
        **wanted,
        "object": "usage_limits",
        "scope": "account",
        "account_id": owner.account_id,
        "key_id": None,
    }
    assert call(stack, "GET", path, token=owner.token) == (200, limits)
    record = account_record(stack, owner.account_id)
    assert record is not None
    assert record.limits == UsageLimits(requests_per_minute=60, daily_spend_cap_nano=2_500_000_000)

    # The owner may read but not change the account's limits.
    status, error = call(stack, "PUT", path, {"requests_per_minute": 1000}, token=owner.token)
    assert status == 403 and error["error"]["code"] == "permission_denied"
    assert call(stack, "GET", path)[1]["requests_per_minute"] == 60

    [entry] = [e for e in audit_of(stack, owner.account_id) if e["action"] == "account_limits_set"]
    assert entry["outcome"] == "applied" and entry["actor"] == "admin"  # REGIO_ADMIN_LABEL
    assert "requests_per_minute=60" in entry["reason"]
    assert "daily_spend_cap_eur=2.5" in entry["reason"]

    # A suspended account's record leaves the bucket and comes back when it is unsuspended.
    assert call(stack, "POST", f"/admin/v1/accounts/{owner.account_id}/suspend")[0] == 200
    assert account_record(stack, owner.account_id) is None
    assert call(stack, "POST", f"/admin/v1/accounts/{owner.account_id}/unsuspend")[0] == 200
    assert account_record(stack, owner.account_id) == record

    # PUT replaces every limit: an empty body removes them all, and the record with them.
    status, limits = call(stack, "PUT", path, {})
    assert status == 200 and {k: limits[k] for k in NO_LIMITS} == NO_LIMITS
    assert account_record(stack, owner.account_id) is None


def test_an_owner_caps_their_own_key_and_the_listing_shows_it(stack: Stack) -> None:
    owner = new_owner(stack)
    path = f"/admin/v1/accounts/{owner.account_id}/keys/{owner.key_id}/limits"
    wanted: dict[str, object] = {"tokens_per_minute": 5000, "max_concurrent_requests": 2}
    wanted["monthly_spend_cap_eur"] = "10.000000001"
    status, limits = call(stack, "PUT", path, wanted, token=owner.token)
    assert status == 200
    assert limits["scope"] == "key" and limits["key_id"] == owner.key_id
    assert {k: limits[k] for k in NO_LIMITS} == {**NO_LIMITS, **wanted}
    assert call(stack, "GET", path, token=owner.token) == (200, limits)

    listed = call(stack, "GET", f"/admin/v1/accounts/{owner.account_id}/keys")[1]["data"]
    assert [key["limits"] for key in listed] == [{**NO_LIMITS, **wanted}]

    assert key_record(stack, owner.api_key).limits == UsageLimits(
        tokens_per_minute=5000, max_concurrent_requests=2, monthly_spend_cap_nano=10_000_000_001
    )
    [entry] = [e for e in audit_of(stack, owner.account_id) if e["action"] == "key_limits_set"]
    assert entry["actor"] == f"owner:{owner.account_id}" and owner.key_id in entry["reason"]

    # The admin may change them too; the key's record follows.
    assert call(stack, "PUT", path, {"requests_per_minute": 10})[0] == 200
    assert key_record(stack, owner.api_key).limits == UsageLimits(requests_per_minute=10)


def test_another_accounts_key_or_account_is_not_found(stack: Stack) -> None:
    mine, theirs = new_owner(stack), new_owner(stack)
    # The admin, through the wrong account: the key is not that account's.
    path = f"/admin/v1/accounts/{mine.account_id}/keys/{theirs.key_id}/limits"
    for method, body in (("GET", None), ("PUT", {"requests_per_minute": 1})):
        status, error = call(stack, method, path, body)
        assert status == 404 and error["error"]["param"] == "key_id"
        status, error = call(stack, method, path, body, token=mine.token)
        assert status == 404 and error["error"]["param"] == "key_id"
    # An owner, on the other account: it does not exist for them.
    path = f"/admin/v1/accounts/{theirs.account_id}/keys/{theirs.key_id}/limits"
    status, error = call(stack, "PUT", path, {"requests_per_minute": 1}, token=mine.token)
    assert status == 404 and error["error"]["param"] == "account_id"
    their_account = f"/admin/v1/accounts/{theirs.account_id}/limits"
    assert call(stack, "GET", their_account, token=mine.token)[0] == 404
    # Nothing changed.
    assert call(stack, "GET", path)[1]["requests_per_minute"] is None


def test_invalid_limits_are_400s_naming_the_field(stack: Stack) -> None:
    owner = new_owner(stack)
    path = f"/admin/v1/accounts/{owner.account_id}/keys/{owner.key_id}/limits"
    for body, param in (
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"tokens_per_minute": 1.5}, "tokens_per_minute"),
        ({"daily_spend_cap_eur": "a lot"}, "daily_spend_cap_eur"),
    ):
        status, error = call(stack, "PUT", path, body)
        assert status == 400 and error["error"]["param"] == param, (body, error)
    assert call(stack, "GET", path)[1]["requests_per_minute"] is None


def test_the_cli_shows_and_changes_limits_one_at_a_time(stack: Stack) -> None:
    owner = new_owner(stack)
    account, key = owner.account_id, owner.key_id
    code, _ = regio(stack, "admin", "limits", "set", account, "--daily-spend-cap-eur", "3.5")
    assert code == 0
    code, _ = regio(stack, "admin", "limits", "set", account, "--requests-per-minute", "30")
    assert code == 0
    code, out = regio(stack, "admin", "limits", "show", account)
    header, row = out.splitlines()
    assert header.split()[:4] == ["SCOPE", "ACCOUNT", "KEY", "RPM"]
    assert row.split() == ["account", account, "-", "30", "none", "none", "3.5", "none"]

    key_limits = ("admin", "limits", "set", account, "--key", key)
    assert regio(stack, *key_limits, "--tokens-per-minute", "900")[0] == 0
    code, out = regio(stack, "admin", "keys", "list", account)
    assert code == 0 and "tpm=900" in out.splitlines()[1].split()
    # The API's refusal is the CLI's error (exit 1), and nothing changes.
    assert regio(stack, *key_limits, "--tokens-per-minute", "0")[0] == 1
    assert (
        call(stack, "GET", f"/admin/v1/accounts/{account}/keys/{key}/limits")[1][
            "tokens_per_minute"
        ]
        == 900
    )
