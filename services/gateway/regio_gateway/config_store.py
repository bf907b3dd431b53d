"""In-memory view of API keys, accounts' limits and activations, kept fresh by watching the NATS
KV bucket."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.js.kv import KeyValue
from pydantic import ValidationError

from regio_common.config_records import (
    AccountRecord,
    ActivationRecord,
    ApiKeyRecord,
    UsageLimits,
    hash_api_key,
)
from regio_common.ops_server import NotReady
from regio_common.subjects import ACCOUNT_PREFIX, ACTIVATION_PREFIX, API_KEY_PREFIX

log = structlog.get_logger()


class ConfigStore:
    """Answers "whose key is this?" and "is this route activated here?" without a network hop."""

    def __init__(self, pepper: str) -> None:
        # The bucket holds keyed hashes only: a presented key is hashed with the same pepper.
        self._pepper = pepper
        self._keys: dict[str, ApiKeyRecord] = {}
        self._accounts: dict[str, AccountRecord] = {}
        self._activations: dict[tuple[str, str, str], ActivationRecord] = {}
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def account_for_key(self, api_key: str) -> ApiKeyRecord | None:
        record = self._keys.get(hash_api_key(api_key, self._pepper))
        if record is None or record.status != "active":
            return None
        return record

    def account_limits(self, account_id: str) -> UsageLimits:
        """The account's limits; an account without an entry has none."""
        record = self._accounts.get(account_id)
        return record.limits if record is not None else UsageLimits()

    async def check_synced(self) -> None:
        """Readiness: keys and activations were read from the bucket (else every key fails)."""
        if not self.synced.is_set():
            raise NotReady("keys and activations not synced yet")

    def activation(self, account_id: str, route: str, region: str) -> ActivationRecord | None:
        return self._activations.get((account_id, route, region))

    def activations_of(self, account_id: str) -> list[ActivationRecord]:
        return [a for (account, _, _), a in self._activations.items() if account == account_id]

    def apply(self, key: str, value: bytes | None, deleted: bool) -> None:
        """Apply one KV entry (also used by unit tests)."""
        kind, _, rest = key.partition(".")
        try:
            if kind == API_KEY_PREFIX:
                if deleted or not value:
                    self._keys.pop(rest, None)
                else:
                    self._keys[rest] = ApiKeyRecord.model_validate_json(value)
            elif kind == ACCOUNT_PREFIX:
                if deleted or not value:
                    self._accounts.pop(rest, None)
                else:
                    self._accounts[rest] = AccountRecord.model_validate_json(value)
            elif kind == ACTIVATION_PREFIX:
                account_id, _, route_region = rest.partition(".")
                route, _, region = route_region.partition(".")
                if deleted or not value:
                    self._activations.pop((account_id, route, region), None)
                else:
                    self._activations[(account_id, route, region)] = (
                        ActivationRecord.model_validate_json(value)
                    )
        except ValidationError:
            log.error("config_record_invalid", key=key)

    async def start(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow(watcher))

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # caught up with the bucket's current content
                self.synced.set()
                log.info("config_synced", keys=len(self._keys), activations=len(self._activations))
                continue
            self.apply(entry.key, entry.value, entry.operation in ("DEL", "PURGE"))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
