"""Publishes what gateways need (key hashes, activations) to the NATS KV config bucket.

After each committed change the affected entries are re-read from PostgreSQL under a lock and
put or deleted, so the bucket converges on the database even when changes race; at start the
whole bucket is rebuilt from PostgreSQL, so a lost or stale bucket heals itself. A key is in
the bucket only while it is not revoked and its account is not suspended: gateways refuse any
key they do not find."""

from __future__ import annotations

import structlog
from nats.js.kv import KeyValue

from regio_common.config_records import ActivationRecord, ApiKeyRecord, ThinkingSettings
from regio_common.subjects import activation_kv_key, api_key_kv_key
from regio_dashboard.store import Activation, ApiKey, DashboardStore

log = structlog.get_logger()


class ConfigProjection:
    def __init__(self, kv: KeyValue, store: DashboardStore) -> None:
        self._kv = kv
        self._store = store

    async def sync_account_keys(self, account_id: str) -> None:
        """Publish the account's live keys and remove its revoked or suspended ones."""
        async with self._store.locked_account_keys(account_id) as snapshot:
            live = {key.key_id for key in snapshot.live_keys()}
            for key in snapshot.keys:
                if key.key_id in live:
                    await self._put_api_key(key)
                else:
                    await self._kv.delete(api_key_kv_key(key.key_hash))
        log.info("api_keys_projected", account_id=account_id, live=len(live))

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
            key_id=key.key_id, account_id=key.account_id, activations=list(key.activations)
        )
        await self._kv.put(api_key_kv_key(key.key_hash), record.model_dump_json().encode())

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
