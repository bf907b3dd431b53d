"""Publishes what gateways need (key hashes, activations) to the NATS KV config bucket.

Each change is put right after its database commit; at start the whole bucket is rebuilt from
PostgreSQL, so a lost or stale bucket heals itself."""

from __future__ import annotations

import structlog
from nats.js.kv import KeyValue

from regio_common.config_records import ActivationRecord, ApiKeyRecord
from regio_common.subjects import activation_kv_key, api_key_kv_key
from regio_dashboard.store import Activation, ApiKey, DashboardStore

log = structlog.get_logger()


class ConfigProjection:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def put_api_key(self, key: ApiKey) -> None:
        record = ApiKeyRecord(key_id=key.key_id, account_id=key.account_id)
        await self._kv.put(api_key_kv_key(key.key_hash), record.model_dump_json().encode())

    async def put_activation(self, activation: Activation) -> None:
        record = ActivationRecord(
            account_id=activation.account_id,
            route=activation.route,
            region=activation.region,
            free_system_prompt=activation.free_system_prompt,
            created=int(activation.created_at.timestamp()),
        )
        key = activation_kv_key(activation.account_id, activation.route, activation.region)
        await self._kv.put(key, record.model_dump_json().encode())

    async def rebuild(self, store: DashboardStore) -> None:
        wanted: set[str] = set()
        for key in await store.active_api_keys():
            await self.put_api_key(key)
            wanted.add(api_key_kv_key(key.key_hash))
        for activation in await store.activations():
            await self.put_activation(activation)
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
