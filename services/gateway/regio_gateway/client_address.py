"""The address a request comes from, for the per-client protections.

Behind N trusted proxies (the Ingress), each appends the address it received the request from to
X-Forwarded-For, so the N-th entry from the right is the one the first trusted proxy saw: the
client. Entries further left were written by the client itself and prove nothing."""

from __future__ import annotations

from aiohttp import web

UNKNOWN_ADDRESS = "unknown"


def client_address(request: web.Request, trusted_proxy_hops: int) -> str:
    peer = request.remote or UNKNOWN_ADDRESS
    if trusted_proxy_hops <= 0:
        return peer
    forwarded = [
        entry.strip()
        for header in request.headers.getall("X-Forwarded-For", [])
        for entry in header.split(",")
    ]
    forwarded = [entry for entry in forwarded if entry]
    if len(forwarded) < trusted_proxy_hops:
        # Fewer entries than proxies: the request did not come through them all (or a proxy
        # dropped the header); the peer is the best address there is.
        return peer
    return forwarded[-trusted_proxy_hops]


_CLIENT_ADDRESS = web.RequestKey("client_address", str)


def request_client_address(request: web.Request, trusted_proxy_hops: int) -> str:
    """`client_address`, worked out once per request."""
    if _CLIENT_ADDRESS not in request:
        request[_CLIENT_ADDRESS] = client_address(request, trusted_proxy_hops)
    return request[_CLIENT_ADDRESS]
