"""The dev stack's secrets: generated once per data folder and kept there in files only the
owner may read, so a restarted stack keeps its keys valid and its services' passwords stable."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# NATS users of deploy/k8s/base/nats.conf, one per service; `ops` exists in the dev stack only
# (full access, for the test harness, benches and debugging; never given to a service).
NATS_SERVICE_USERS = ("gateway", "worker", "billing", "dashboard")
NATS_OPS_USER = "ops"
# The services that call billing, each with its own token.
BILLING_CLIENTS = ("gateway", "dashboard")

ADMIN_TOKEN_FILE = "admin-token"
SECRETS_FILE = "secrets.json"
NATS_PASSWORDS_FILE = "nats-passwords.json"


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    partial.chmod(0o600)  # the mode of os.open applies only when it creates the file
    os.replace(partial, path)


def kept_json(path: Path, wanted: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    """The JSON object in `path`, with each missing entry of `wanted` made once and saved."""
    kept: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    missing = {name: make() for name, make in wanted.items() if name not in kept}
    if missing:
        kept.update(missing)
        write_private(path, json.dumps(kept, indent=2) + "\n")
    return kept


def kept_token(path: Path, make: Callable[[], str]) -> str:
    if path.exists():
        return path.read_text().strip()
    token = make()
    write_private(path, token)
    return token


def _nats_password() -> str:
    # Hex only: safe in a URL's userinfo and as a nats.conf variable value.
    return secrets.token_hex(24)


@dataclass(frozen=True)
class StackCredentials:
    admin_token: str
    api_key_pepper: str
    billing_tokens: dict[str, str]  # billing client (gateway, dashboard) → its token
    nats_passwords: dict[str, str]  # NATS user → password

    @classmethod
    def load_or_create(cls, data_dir: Path) -> StackCredentials:
        admin_token = kept_token(
            data_dir / ADMIN_TOKEN_FILE, lambda: "adm-" + secrets.token_urlsafe(24)
        )
        kept = kept_json(
            data_dir / SECRETS_FILE,
            {
                "api_key_pepper": lambda: secrets.token_urlsafe(32),
                "billing_tokens": lambda: {
                    client: f"bt-{client}-" + secrets.token_urlsafe(24)
                    for client in BILLING_CLIENTS
                },
            },
        )
        passwords = kept_json(
            data_dir / NATS_PASSWORDS_FILE,
            {user: _nats_password for user in (*NATS_SERVICE_USERS, NATS_OPS_USER)},
        )
        return cls(
            admin_token=admin_token,
            api_key_pepper=kept["api_key_pepper"],
            billing_tokens=dict(kept["billing_tokens"]),
            nats_passwords=dict(passwords),
        )

    def values(self) -> list[str]:
        """Every secret, e.g. to check that none of them reaches a log."""
        return [
            self.admin_token,
            self.api_key_pepper,
            *self.billing_tokens.values(),
            *self.nats_passwords.values(),
        ]
