"""Publishes what gateways need (key hashes with their limits, account limits, activations) to
the NATS KV config bucket.

After each committed change the affected entries are re-read from PostgreSQL under a lock and
put or deleted, so the bucket converges on the database even when changes race; at start the
whole bucket is rebuilt from PostgreSQL, so a lost or stale bucket heals itself. A key is in
the bucket only while it is not revoked and its account is not suspended: gateways refuse any
key they do not find. An account's record (its limits) is there only while it has limits and
is not suspended."""

from __future__ import annotations

import structlog
from nats.js.kv import KeyValue

from regio_common.config_records import (
    AccountRecord,
    ActivationRecord,
    ApiKeyRecord,
    ThinkingSettings,
    UsageLimits,
)
from regio_common.subjects import account_kv_key, activation_kv_key, api_key_kv_key
from regio_dashboard.store import Activation, ApiKey, DashboardStore

log = structlog.get_logger()


class ConfigProjection:
    def __init__(self, kv: KeyValue, store: DashboardStore) -> None:
        self._kv = kv
        self._store = store

    async def sync_account(self, account_id: str) -> None:
        """Publish the account's limits and live keys; remove its revoked or suspended keys,
        and its record once it has no limits or is suspended."""
        async with self._store.locked_account_keys(account_id) as snapshot:
            live = {key.key_id for key in snapshot.live_keys()}
            for key in snapshot.keys:
                if key.key_id in live:
                    await self._put_api_key(key)
                else:
                    await self._kv.delete(api_key_kv_key(key.key_hash))
            limits = snapshot.account_limits()
            if limits is None:
                await self._kv.delete(account_kv_key(account_id))
            else:
                await self._put_account(account_id, limits)
        log.info(
            "account_projected", account_id=account_id, live=len(live), limited=limits is not None
        )

    async def sync_activation(self, account_id: str, route: str, region: str) -> None:
        """Publish the activation, or remove it once cancelled."""
        async with self._store.locked_activation(account_id, route, region) as activation:
            if activation is None:
                await self._kv.delete(activation_kv_key(account_id, route, region))
            else:
                await self._put_activation(activation)

    async def rebuild(self) -> None:
        wanted: set[str] = set()
        for key in await self._store.active_api_keys():
            await self._put_api_key(key)
            wanted.add(api_key_kv_key(key.key_hash))
        for account in await self._store.limited_accounts():
            await self._put_account(account.account_id, account.limits)
            wanted.add(account_kv_key(account.account_id))
        for activation in await self._store.activations():
            await self._put_activation(activation)
            wanted.add(
                activation_kv_key(activation.account_id, activation.route, activation.region)
            )
        try:
            present = set(await self._kv.keys())
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            present = set()
        for stale in present - wanted:
            await self._kv.delete(stale)
        log.info("config_projection_rebuilt", entries=len(wanted), removed=len(present - wanted))

    async def _put_api_key(self, key: ApiKey) -> None:
        record = ApiKeyRecord(
            key_id=key.key_id,
            account_id=key.account_id,
            activations=list(key.activations),
            limits=key.limits,
        )
        await self._kv.put(api_key_kv_key(key.key_hash), record.model_dump_json().encode())

    async def _put_account(self, account_id: str, limits: UsageLimits) -> None:
        record = AccountRecord(account_id=account_id, limits=limits)
        await self._kv.put(account_kv_key(account_id), record.model_dump_json().encode())

    async def _put_activation(self, activation: Activation) -> None:
        record = ActivationRecord(
            account_id=activation.account_id,
            route=activation.route,
            region=activation.region,
            free_system_prompt=activation.free_system_prompt,
            thinking=ThinkingSettings.model_validate(
                {
                    "default_effort": activation.thinking_default_effort,
                    "reasoning_output": activation.thinking_reasoning_output,
                }
            ),
            created=int(activation.created_at.timestamp()),
        )
        key = activation_kv_key(activation.account_id, activation.route, activation.region)
        await self._kv.put(key, record.model_dump_json().encode())
