"""NATS subjects, stream and bucket names: the one place that spells them."""

from __future__ import annotations

INFER_PREFIX = "regio.infer"
HEARTBEAT_PREFIX = "regio.heartbeat"
USAGE_PREFIX = "regio.usage"
USAGE_STREAM = "REGIO_USAGE"
BILLING_USAGE_CONSUMER = "billing-settle"
CONFIG_BUCKET = "regio_config"
API_KEY_PREFIX = "apikey"
ACTIVATION_PREFIX = "activation"
ACCOUNT_PREFIX = "account"


def infer_subject(country: str, route: str) -> str:
    return f"{INFER_PREFIX}.{country}.{route}"


def worker_queue_group(country: str, route: str) -> str:
    return f"workers.{country}.{route}"


def heartbeat_subject(country: str, route: str) -> str:
    return f"{HEARTBEAT_PREFIX}.{country}.{route}"


HEARTBEAT_WILDCARD = f"{HEARTBEAT_PREFIX}.>"


def cancel_subject(worker_id: str) -> str:
    return f"regio.worker.{worker_id}.cancel"


def worker_infer_subject(worker_id: str) -> str:
    """One worker's own request subject: the gateway picks the least loaded worker itself."""
    return f"regio.worker.{worker_id}.infer"


def usage_subject(route: str) -> str:
    return f"{USAGE_PREFIX}.{route}"


USAGE_WILDCARD = f"{USAGE_PREFIX}.>"


def api_key_kv_key(key_hash: str) -> str:
    return f"{API_KEY_PREFIX}.{key_hash}"


def account_kv_key(account_id: str) -> str:
    return f"{ACCOUNT_PREFIX}.{account_id}"


def activation_kv_key(account_id: str, route: str, region: str) -> str:
    return f"{ACTIVATION_PREFIX}.{account_id}.{route}.{region}"
