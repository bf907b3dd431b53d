"""The secrets the dashboard issues: inference API keys and account-owner management tokens.

Both are 256-bit random strings, stored only as a keyed hash (HMAC-SHA256 under the server-side
pepper, `REGIO_API_KEY_PEPPER`, which gateways share for API keys). Distinct prefixes make them
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


@dataclass(frozen=True)
class SecretHasher:
    """Issues and hashes secrets under one pepper (empty: no pepper)."""

    pepper: str = ""

    def issue(self, kind_prefix: str) -> IssuedSecret:
        plaintext = kind_prefix + secrets.token_urlsafe(32)
        return IssuedSecret(
            plaintext=plaintext,
            secret_hash=self.hash(plaintext),
            prefix=plaintext[: len(kind_prefix) + 4],
            last_four=plaintext[-4:],
        )

    def hash(self, plaintext: str) -> str:
        return hash_api_key(plaintext, self.pepper)


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(8)}"
