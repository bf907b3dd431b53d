"""Who may call the dashboard: 401 without a valid credential, 403 for the wrong role, 404 for
another account's objects."""

from __future__ import annotations

import pytest

from regio_common.config_records import hash_api_key
from regio_common.errors import NotFound, PermissionDenied, Unauthenticated
from regio_dashboard.auth import Principal, authenticate, bearer_token
from regio_dashboard.credentials import API_KEY_PREFIX, MANAGEMENT_TOKEN_PREFIX, SecretHasher

ADMIN_TOKEN = "admin-secret"
HASHER = SecretHasher("test-pepper")


class TokenDirectory:
    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.looked_up: list[str] = []

    async def account_of(self, token: str) -> str | None:
        self.looked_up.append(token)
        return self.tokens.get(token)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("Bearer a b", None),
        ("abc", None),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


async def test_the_admin_token_is_the_admin_role() -> None:
    directory = TokenDirectory({})
    principal = await authenticate(f"Bearer {ADMIN_TOKEN}", ADMIN_TOKEN, directory.account_of)
    assert principal == Principal("admin")
    assert directory.looked_up == []


async def test_a_live_management_token_is_its_account_owner() -> None:
    token = HASHER.issue(MANAGEMENT_TOKEN_PREFIX).plaintext
    directory = TokenDirectory({token: "acct_1"})
    principal = await authenticate(f"Bearer {token}", ADMIN_TOKEN, directory.account_of)
    assert principal == Principal("owner", "acct_1")


@pytest.mark.parametrize("header", [None, "Basic x", "Bearer rgm-unknown", "Bearer nope"])
async def test_no_valid_credential_is_401(header: str | None) -> None:
    with pytest.raises(Unauthenticated) as caught:
        await authenticate(header, ADMIN_TOKEN, TokenDirectory({}).account_of)
    assert caught.value.status == 401 and caught.value.code == "invalid_credentials"


async def test_an_api_key_is_never_looked_up_as_a_management_token() -> None:
    key = HASHER.issue(API_KEY_PREFIX).plaintext
    directory = TokenDirectory({key: "acct_1"})  # even if the hash somehow matched
    with pytest.raises(Unauthenticated):
        await authenticate(f"Bearer {key}", ADMIN_TOKEN, directory.account_of)
    assert directory.looked_up == []


def test_roles_and_object_level_authorization() -> None:
    admin, owner = Principal("admin"), Principal("owner", "acct_1")
    admin.require_admin()
    admin.require_account("acct_2")
    owner.require_account("acct_1")
    with pytest.raises(PermissionDenied) as denied:
        owner.require_admin()
    assert denied.value.status == 403
    with pytest.raises(NotFound) as hidden:
        owner.require_account("acct_2")
    assert hidden.value.status == 404


def test_issued_secrets_are_kinds_apart_and_stored_hashed() -> None:
    key, token = HASHER.issue(API_KEY_PREFIX), HASHER.issue(MANAGEMENT_TOKEN_PREFIX)
    assert key.plaintext.startswith("rg-") and not key.plaintext.startswith("rgm-")
    assert token.plaintext.startswith("rgm-")
    for secret in (key, token):
        assert secret.plaintext not in secret.secret_hash and len(secret.secret_hash) == 64
        assert secret.plaintext.startswith(secret.prefix)
        assert secret.plaintext.endswith(secret.last_four)


def test_secrets_are_hashed_under_the_pepper_the_gateway_shares() -> None:
    issued = HASHER.issue(API_KEY_PREFIX)
    # The gateway hashes a presented key with the same pepper and finds the same record...
    assert issued.secret_hash == hash_api_key(issued.plaintext, "test-pepper")
    # ...and a table of hashes is useless without the pepper.
    assert issued.secret_hash != SecretHasher("").hash(issued.plaintext)
    assert issued.secret_hash != SecretHasher("other-pepper").hash(issued.plaintext)
