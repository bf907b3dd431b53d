"""The rules of billing's credential check: reading the bearer token, finding its client, and
the gateway's method allowlist."""

from __future__ import annotations

import pytest

from regio_billing.auth_interceptor import bearer_token, client_of, may_call

TOKENS = {"gateway": b"gw-secret", "dashboard": b"db-secret"}


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer gw-secret"),), "gw-secret"),
        ((("user-agent", "x"), ("authorization", "Bearer db-secret")), "db-secret"),
        ((("authorization", "Basic gw-secret"),), ""),
        ((("authorization", "gw-secret"),), ""),
        ((), ""),
        (None, ""),
    ],
)
def test_the_bearer_token_is_read_from_the_metadata(metadata: object, token: str) -> None:
    assert bearer_token(metadata) == token


def test_a_token_names_its_client() -> None:
    assert client_of("gw-secret", TOKENS) == "gateway"
    assert client_of("db-secret", TOKENS) == "dashboard"
    assert client_of("gw-secre", TOKENS) is None
    assert client_of("gw-secrett", TOKENS) is None
    assert client_of("", TOKENS) is None
    assert client_of("", {"odd": b""}) is None  # an empty token never authenticates


@pytest.mark.parametrize("method", ["Reserve", "ReserveMany", "Release", "Settle", "GetBalance"])
def test_the_gateway_may_call_the_request_path(method: str) -> None:
    assert may_call("gateway", method)


@pytest.mark.parametrize(
    "method", ["AddCredits", "AdjustCredits", "RefundPayment", "SetRoutePrice", "ListUsage"]
)
def test_the_gateway_may_not_move_money_or_read_statements(method: str) -> None:
    assert not may_call("gateway", method)
    assert may_call("dashboard", method)
