"""The client address of the per-client protections: the TCP peer, or behind N trusted proxies
the N-th X-Forwarded-For entry from the right (never one the client could have written)."""

from __future__ import annotations

from unittest import mock

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from regio_gateway.client_address import client_address


def request(*forwarded: str) -> web.Request:
    headers = [("X-Forwarded-For", value) for value in forwarded]
    transport = mock.Mock()
    transport.get_extra_info.return_value = ("10.0.0.7", 51234)
    return make_mocked_request("GET", "/v1/models", headers=headers, transport=transport)


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() -> None:
    assert client_address(request("203.0.113.9"), 0) == "10.0.0.7"


def test_behind_proxies_the_entry_the_first_trusted_proxy_wrote_is_the_client() -> None:
    # The client forged "1.2.3.4"; the Ingress appended the address it saw.
    forged = request("1.2.3.4, 203.0.113.9")
    assert client_address(forged, 1) == "203.0.113.9"
    # Two proxies: the outer one's entry is second from the right; headers may be repeated.
    two_hops = request("1.2.3.4, 203.0.113.9", "10.1.1.1")
    assert client_address(two_hops, 2) == "203.0.113.9"


def test_a_request_that_bypassed_the_proxies_falls_back_to_the_peer() -> None:
    assert client_address(request(), 1) == "10.0.0.7"
    assert client_address(request("203.0.113.9"), 2) == "10.0.0.7"
