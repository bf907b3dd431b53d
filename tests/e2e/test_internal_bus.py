"""The running stack's nats-server lets each service do its own job only (issue 9).

The dev stack runs the users and permissions of deploy/k8s/base/nats.conf; here a client holding
one service's credentials tries what another service does, against the stack the other e2e tests
use: forged usage records (free inference), forged API keys in the config bucket (anyone's
account), inference requests from a worker, and a connection without credentials."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from regio_common.config_records import ApiKeyRecord, config_bucket, hash_api_key
from regio_common.subjects import (
    CONFIG_BUCKET,
    USAGE_STREAM,
    api_key_kv_key,
    infer_subject,
    usage_subject,
)
from regio_devstack.stack import NATS_USER_OF_MODULE, DemoAccount, Stack

REFUSED_WAIT_SECONDS = 1.0


class BusClients:
    """Connections to the stack's nats-server, each as one NATS user, with the errors the
    server sent to it (a denied publish is reported asynchronously, not raised)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.opened: list[Client] = []
        self.errors: dict[str, list[str]] = {}

    async def connect(self, user: str) -> Client:
        errors = self.errors.setdefault(user, [])

        async def on_error(error: Exception) -> None:
            errors.append(str(error))

        client = await nats.connect(
            self.stack.nats_url_for(user),
            name=f"e2e-bus-{user}",
            error_cb=on_error,
            allow_reconnect=False,
        )
        self.opened.append(client)
        return client

    def denied(self, user: str, subject: str) -> bool:
        """The server told `user` that publishing to `subject` is not allowed."""
        expected = f'permissions violation for publish to "{subject}"'.lower()
        return expected in "\n".join(self.errors.get(user, [])).lower()


@pytest.fixture
async def bus(stack: Stack) -> AsyncIterator[BusClients]:
    clients = BusClients(stack)
    yield clients
    for client in clients.opened:
        await client.close()


async def refused(call: Awaitable[object]) -> bool:
    """True when the call fails the way a denied JetStream call fails (no answer in time)."""
    try:
        await asyncio.wait_for(call, REFUSED_WAIT_SECONDS * 3)
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
        return True
    return False


def test_each_service_connects_with_its_own_user(stack: Stack) -> None:
    seen = set()
    for process in stack.services:
        assert process.env is not None
        url = urlsplit(process.env["REGIO_NATS_URL"])
        module = process.argv[-1]
        assert url.username == NATS_USER_OF_MODULE[module], process.name
        assert url.password == stack.credentials.nats_passwords[url.username]
        seen.add(url.username)
    assert seen == {"gateway", "worker", "billing", "dashboard"}  # never `ops`


async def test_the_gateway_cannot_forge_a_usage_record(bus: BusClients) -> None:
    """A usage record is what billing charges: only workers may publish one."""
    gateway = await bus.connect("gateway")
    subject = usage_subject(f"forged-{secrets.token_hex(4)}")  # in the stream, read by billing
    forging = gateway.jetstream(timeout=REFUSED_WAIT_SECONDS).publish(
        subject, b"{}", headers={"Nats-Msg-Id": f"txn-forged-{secrets.token_hex(4)}"}
    )
    assert await refused(forging)
    assert bus.denied("gateway", subject), bus.errors
    ops = (await bus.connect("ops")).jetstream(timeout=5)
    with pytest.raises(nats.js.errors.NotFoundError):
        await ops.get_last_msg(USAGE_STREAM, subject)


async def test_the_gateway_cannot_write_the_config_bucket(
    bus: BusClients, stack: Stack, demo: DemoAccount
) -> None:
    """A record in the bucket makes a key valid: a gateway that could write one could mint keys
    for any account. Only the dashboard API writes there."""
    forged_key = "rg-forged-" + secrets.token_urlsafe(24)
    kv_key = api_key_kv_key(hash_api_key(forged_key, stack.credentials.api_key_pepper))
    record = ApiKeyRecord(key_id="forged", account_id=demo.account_id)
    gateway = await bus.connect("gateway")
    kv = await config_bucket(gateway.jetstream(timeout=REFUSED_WAIT_SECONDS))
    assert await refused(kv.put(kv_key, record.model_dump_json().encode()))
    assert bus.denied("gateway", f"$KV.{CONFIG_BUCKET}.{kv_key}"), bus.errors
    ops_kv = await config_bucket((await bus.connect("ops")).jetstream(timeout=5))
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await ops_kv.get(kv_key)
    assert not stack.key_authenticates(forged_key)


async def test_a_worker_cannot_send_inference_requests(bus: BusClients) -> None:
    """Requests come from gateways, which authenticated and billed them; not from a worker."""
    subject = infer_subject("zz", f"bus-test-{secrets.token_hex(4)}")  # no worker serves it
    listener = await bus.connect("ops")
    requests = await listener.subscribe(subject)
    await listener.flush()
    gateway = await bus.connect("gateway")
    await gateway.publish(subject, b"from a gateway")
    await gateway.flush()
    assert (await requests.next_msg(timeout=5)).data == b"from a gateway"
    worker = await bus.connect("worker")
    await worker.publish(subject, b"from a worker")
    await worker.flush()
    with pytest.raises(nats.errors.TimeoutError):
        await requests.next_msg(timeout=REFUSED_WAIT_SECONDS)
    assert bus.denied("worker", subject), bus.errors


async def test_a_client_without_credentials_is_refused(stack: Stack) -> None:
    assert stack.nats is not None
    address = urlsplit(stack.nats.url).netloc
    for url in (f"nats://{address}", f"nats://gateway:not-the-password@{address}"):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=5)
