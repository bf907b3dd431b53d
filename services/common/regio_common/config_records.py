"""Records the dashboard API publishes to the NATS KV config bucket and gateways watch.

PostgreSQL is the source of truth; the bucket is a projection that reaches every gateway within
a second, and the dashboard rebuilds it at start."""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from regio_common.subjects import CONFIG_BUCKET


def hash_api_key(api_key: str, pepper: str) -> str:
    """HMAC-SHA256 of the key under the server-side pepper (`REGIO_API_KEY_PEPPER`).

    Keys are 256-bit random secrets, so one keyed hash is enough (no password stretching); the
    pepper, kept outside the database and the bus, makes a leaked hash table useless for
    checking guesses offline."""
    return hmac.new(pepper.encode(), api_key.encode(), hashlib.sha256).hexdigest()


ThinkingEffort = Literal["none", "low", "medium", "high"]
ReasoningOutput = Literal["reasoning_content", "think_tags", "hidden"]


class UsageLimits(BaseModel):
    """Limits of a key or an account, set through the dashboard; None means no limit.

    Windows are UTC: the minute, the day, the calendar month. Tokens are prompt + completion
    tokens of settled usage; spend is what was charged plus what is held."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    daily_spend_cap_nano: int | None = None
    monthly_spend_cap_nano: int | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in self.model_dump().values())


class ApiKeyRecord(BaseModel):
    key_id: str
    account_id: str
    status: Literal["active", "revoked"] = "active"
    # "route/region" activations the key may use; empty means every activation of the account.
    activations: list[str] = []
    limits: UsageLimits = UsageLimits()

    def may_use(self, route: str, region: str) -> bool:
        return not self.activations or f"{route}/{region}" in self.activations


class AccountRecord(BaseModel):
    """Per-account settings gateways need; absent from the bucket when the account has none."""

    account_id: str
    limits: UsageLimits = UsageLimits()


class ThinkingSettings(BaseModel):
    """How an activation thinks by default and how its reasoning reaches the client."""

    default_effort: ThinkingEffort = "medium"
    reasoning_output: ReasoningOutput = "reasoning_content"


class ActivationRecord(BaseModel):
    # Fields added later carry defaults, so records written by older dashboards still parse.
    account_id: str
    route: str
    region: str
    free_system_prompt: str = ""
    thinking: ThinkingSettings = ThinkingSettings()
    created: int


async def config_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The config bucket, created when missing."""
    try:
        kv: KeyValue = await js.key_value(CONFIG_BUCKET)
    except BucketNotFoundError:
        kv = await js.create_key_value(
            KeyValueConfig(
                bucket=CONFIG_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas
            )
        )
    return kv
