"""Which keys gateways may accept: not revoked, of an account that is not suspended."""

from __future__ import annotations

from datetime import UTC, datetime

from regio_dashboard.store import Account, AccountKeys, ApiKey

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def key(key_id: str, revoked: bool = False) -> ApiKey:
    return ApiKey(
        key_id, "acct_1", f"hash-{key_id}", "rg-abcd", "wxyz", NOW, NOW if revoked else None, []
    )


def account(status: str) -> Account:
    return Account("acct_1", "acme", status, NOW)


def test_an_active_account_publishes_its_unrevoked_keys() -> None:
    snapshot = AccountKeys(account("active"), [key("a"), key("b", revoked=True), key("c")])
    assert [k.key_id for k in snapshot.live_keys()] == ["a", "c"]


def test_a_suspended_or_missing_account_publishes_no_key() -> None:
    assert AccountKeys(account("suspended"), [key("a")]).live_keys() == []
    assert AccountKeys(None, [key("a")]).live_keys() == []
