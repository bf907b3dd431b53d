"""Operators can see every service: each one answers /health, /ready and /metrics on its ops
port, one chat completion moves the counters of all four, and its transaction id is on the log
lines of the gateway, the worker and billing."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
from prometheus_client.parser import text_string_to_metric_families

from regio_devstack.processes import ManagedProcess, free_port
from regio_devstack.stack import Stack
from tests.e2e.helpers import settled_balance

CORE_SERVICES = ("gateway", "billing", "dashboard-api")
Samples = list[tuple[str, dict[str, str], float]]


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def scrape(stack: Stack, service: str) -> Samples:
    with urllib.request.urlopen(stack.ops_url(service) + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and labels.items() <= sample_labels.items()
    )


def running_workers(stack: Stack) -> list[ManagedProcess]:
    return [
        process
        for process in stack.services
        if process.name.startswith("worker-")
        and process.running()
        and process.name in stack.ops_ports
    ]


def scrape_workers(stack: Stack) -> Samples:
    return [sample for w in running_workers(stack) for sample in scrape(stack, w.name)]


def log_lines(path: Path, transaction_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a library's plain-text line
        if not isinstance(entry, dict):
            continue
        # Bound to the transaction, or a batch line naming it (billing settles in batches).
        if entry.get("transaction_id") == transaction_id or transaction_id in entry.get(
            "transaction_ids", ()
        ):
            lines.append(entry)
    return lines


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.1)


def test_every_service_is_alive_and_ready(stack: Stack) -> None:
    services = [*CORE_SERVICES, *(worker.name for worker in running_workers(stack))]
    assert len(services) >= 4  # at least one worker
    for service in services:
        assert get(stack.ops_url(service) + "/health") == (200, {"status": "ok"}), service
        status, body = get(stack.ops_url(service) + "/ready")
        assert (status, body["status"]) == (200, "ready"), (service, body)
        assert set(body["checks"].values()) == {"ok"}
    assert set(get(stack.ops_url("billing") + "/ready")[1]["checks"]) == {"postgres", "nats"}
    assert set(get(stack.ops_url("dashboard-api") + "/ready")[1]["checks"]) == {"postgres", "nats"}
    gateway_checks = get(stack.ops_url("gateway") + "/ready")[1]["checks"]
    assert {"nats", "billing"} <= set(gateway_checks)
    worker = running_workers(stack)[0].name
    assert set(get(stack.ops_url(worker) + "/ready")[1]["checks"]) == {"nats", "model"}


def test_one_completion_moves_every_services_metrics_and_logs_its_transaction_id(
    stack: Stack, new_customer: Any
) -> None:
    customer = new_customer(credit_eur="1", regions=("eu",))
    before = {service: scrape(stack, service) for service in CORE_SERVICES}
    workers_before = scrape_workers(stack)

    raw = customer.client.chat.completions.with_raw_response.create(
        model="liv", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    completion = raw.parse()
    transaction_id = raw.headers["x-transaction-id"]
    assert completion.usage is not None
    settled_balance(stack, customer.account_id)  # the usage record was settled
    stack.admin("GET", f"/admin/v1/accounts/{customer.account_id}/balance")

    def billing_settled() -> bool:
        after = scrape(stack, "billing")
        name = "regio_billing_settlements_total"
        settled = {"outcome": "settled"}
        return total(after, name, **settled) > total(before["billing"], name, **settled)

    wait_for(billing_settled)
    after = {service: scrape(stack, service) for service in CORE_SERVICES}
    workers_after = scrape_workers(stack)

    def moved(old: Samples, new: Samples, name: str, /, **labels: str) -> float:
        return total(new, name, **labels) - total(old, name, **labels)

    gateway = (before["gateway"], after["gateway"])
    ok = {"path": "/v1/chat/completions", "region": "eu", "status": "200"}
    assert moved(*gateway, "regio_gateway_requests_total", **ok) == 1
    assert moved(*gateway, "regio_gateway_request_duration_seconds_count", region="eu") >= 1
    ttft = "regio_gateway_time_to_first_token_seconds_count"
    assert moved(*gateway, ttft, model="liv", region="eu") == 1

    workers = (workers_before, workers_after)
    tokens = completion.usage.completion_tokens
    assert moved(*workers, "regio_worker_generated_tokens_total", route="liv") == tokens
    assert moved(*workers, "regio_worker_requests_total", outcome="completed") == 1
    assert moved(*workers, "regio_worker_time_to_first_token_seconds_count") == 1
    if tokens > 1:
        assert moved(*workers, "regio_worker_tokens_per_second_count") == 1
    assert total(workers_after, "regio_worker_queue_length") == 0
    assert total(workers_after, "regio_worker_free_slots") >= 1  # nothing running any more

    billing = (before["billing"], after["billing"])
    assert moved(*billing, "regio_billing_rpc_duration_seconds_count", method="Reserve") == 1
    assert moved(*billing, "regio_billing_rpc_total", method="Reserve", code="OK") == 1
    assert any(name == "regio_billing_holds_open" for name, _, _ in after["billing"])

    dashboard = (before["dashboard-api"], after["dashboard-api"])
    balance = {"path": "/admin/v1/accounts/{account_id}/balance", "status": "200"}
    assert moved(*dashboard, "regio_dashboard_requests_total", **balance) >= 1
    # Route patterns only: an account id never becomes a label value.
    assert not any(
        customer.account_id in value
        for _, labels, _ in after["dashboard-api"]
        for value in labels.values()
    )

    gateway_lines = log_lines(stack.logs_dir / "gateway.log", transaction_id)
    (access,) = [line for line in gateway_lines if line["event"] == "request"]
    assert (access["status"], access["route"], access["region"]) == (200, "liv", "eu")
    assert access["country"] and access["worker_id"]
    worker_events = {
        line["event"]
        for worker in running_workers(stack)
        for line in log_lines(worker.log_path, transaction_id)
    }
    assert {"generation_started", "request_finished"} <= worker_events

    def billing_logged_settlement() -> bool:
        lines = log_lines(stack.logs_dir / "billing.log", transaction_id)
        return any("settle" in line["event"] for line in lines)

    wait_for(billing_logged_settlement, timeout=5)


def test_refusals_are_counted_by_reason(stack: Stack, client: openai.OpenAI) -> None:
    before = scrape(stack, "gateway")
    bad_key = client.with_options(api_key="rg-not-a-key")
    try:
        bad_key.models.list()
        raise AssertionError("an unknown key must be refused")
    except openai.PermissionDeniedError:
        pass
    try:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        raise AssertionError("an unknown model must be refused")
    except openai.NotFoundError:
        pass
    after = scrape(stack, "gateway")
    name = "regio_gateway_refusals_total"
    for reason in ("authentication", "model_not_found"):
        assert total(after, name, reason=reason) == total(before, name, reason=reason) + 1
    # The client's model name is not a label value.
    assert not any("no-such-model" in str(labels) for _, labels, _ in after)


def test_ready_answers_503_naming_the_dependency_that_is_down(stack: Stack) -> None:
    """A worker whose NATS is unreachable is alive but not ready, and says why."""
    unreachable = free_port()
    worker = stack.start_worker(
        "liv",
        "de",
        REGIO_WORKER_ENGINE="scripted",  # loads at once: only NATS is missing
        REGIO_NATS_URL=f"nats://127.0.0.1:{unreachable}",
    )
    try:
        url = stack.ops_url(worker.name)

        def answered_not_ready() -> bool:
            try:
                status, body = get(url + "/ready")
            except (urllib.error.URLError, OSError):
                return False  # not listening yet
            return status == 503 and body["checks"].get("model") == "ok"

        worker.wait_until(answered_not_ready, timeout=30, what="an answer on /ready")
        status, body = get(url + "/ready")
        assert status == 503
        assert body["status"] == "not_ready"
        assert body["checks"]["nats"].startswith("not connected")
        assert "Traceback" not in json.dumps(body)
        assert get(url + "/health") == (200, {"status": "ok"})
    finally:
        worker.stop()
