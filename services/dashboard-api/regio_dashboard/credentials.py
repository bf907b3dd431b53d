"""The secrets the dashboard issues: inference API keys and account-owner management tokens.

Both are 256-bit random strings, stored only as a SHA-256 hash. Distinct prefixes make them
recognisable (e.g. by secret scanners) and keep one kind from ever passing as the other: the
gateway only knows API key hashes, the dashboard only management token hashes."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from regio_common.config_records import hash_api_key

API_KEY_PREFIX = "rg-"
MANAGEMENT_TOKEN_PREFIX = "rgm-"


@dataclass(frozen=True)
class IssuedSecret:
    plaintext: str
    secret_hash: str
    prefix: str  # the kind's prefix and four more characters, safe to display
    last_four: str


def issue_secret(kind_prefix: str) -> IssuedSecret:
    plaintext = kind_prefix + secrets.token_urlsafe(32)
    return IssuedSecret(
        plaintext=plaintext,
        secret_hash=hash_secret(plaintext),
        prefix=plaintext[: len(kind_prefix) + 4],
        last_four=plaintext[-4:],
    )


def hash_secret(plaintext: str) -> str:
    return hash_api_key(plaintext)


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(8)}"
