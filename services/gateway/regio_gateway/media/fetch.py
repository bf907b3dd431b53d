"""Downloading a client's media URL: https only (redirects too), public addresses only unless
allowed (so a client cannot make the gateway reach internal services), within a time and size
limit. The address a host name resolves to is checked by the connector's resolver, and the
connection goes to exactly that address, so a name cannot resolve to another address between
the check and the connection."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from regio_gateway.media.problems import UrlProblem

log = structlog.get_logger()

USER_AGENT = "Regio-Media-Fetcher/1"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
READ_CHUNK_BYTES = 65536


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str  # the server's claim, lower case ("application/octet-stream" when none)


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not an address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class NonPublicAddress(OSError):
    """The host resolves only to addresses the fetcher may not reach."""


class PublicAddressResolver(AbstractResolver):
    """The system resolver, keeping only public addresses (all of them when `allow_private`)."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = aiohttp.DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [
            result for result in results if self._allow_private or is_public_address(result["host"])
        ]
        if not allowed:
            raise NonPublicAddress(f"{host} resolves to no public address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class MediaFetcher:
    """Downloads media URLs over one shared HTTP client session, made on first use (inside the
    running event loop) and closed by `close()` when the gateway stops."""

    def __init__(
        self,
        *,
        timeout_seconds: float,
        max_redirects: int,
        allow_private_addresses: bool,
        ca_file: Path | None,
    ) -> None:
        self._timeout = timeout_seconds
        self._max_redirects = max_redirects
        self._allow_private = allow_private_addresses
        self._ca_file = ca_file
        self._client: aiohttp.ClientSession | None = None

    async def fetch(self, url: str, max_bytes: int) -> Fetched:
        """The body of a 200 answer of `url`, at most `max_bytes`; otherwise UrlProblem."""
        target = _https_url(url)
        try:
            async with asyncio.timeout(self._timeout):
                fetched = await self._follow(target, max_bytes)
        except TimeoutError:
            raise UrlProblem(
                f"Downloading the URL took longer than {self._timeout:g} seconds."
            ) from None
        # The host only: a path or query string may hold a client's secrets.
        log.info("media_fetched", host=target.host, bytes=len(fetched.data))
        return fetched

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _follow(self, url: URL, max_bytes: int) -> Fetched:
        for _ in range(self._max_redirects + 1):
            self._check_literal_address(url)
            try:
                async with self._session().get(url, allow_redirects=False) as response:
                    if response.status in REDIRECT_STATUSES:
                        location = response.headers.get("Location")
                        if not location:
                            raise UrlProblem("The URL redirected without a Location.")
                        url = _https_url(str(url.join(URL(location))), redirected=True)
                        continue
                    if response.status != 200:
                        raise UrlProblem(f"The URL answered with HTTP status {response.status}.")
                    if (response.content_length or 0) > max_bytes:
                        raise UrlProblem(f"The URL's content is larger than {max_bytes} bytes.")
                    data = await _read_at_most(response, max_bytes)
                    return Fetched(data, response.content_type.lower())
            except aiohttp.ClientConnectorCertificateError:
                raise UrlProblem("The URL's TLS certificate is not trusted.") from None
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.os_error, NonPublicAddress):
                    raise UrlProblem(
                        "The URL's host does not resolve to a public address."
                    ) from None
                raise UrlProblem("The URL's host cannot be reached.") from None
            except aiohttp.ClientError:
                raise UrlProblem("Downloading the URL failed.") from None
        raise UrlProblem(f"The URL redirected more than {self._max_redirects} times.")

    def _check_literal_address(self, url: URL) -> None:
        """A URL naming an IP address skips the resolver: check it here."""
        host = url.host or ""
        try:
            public = is_public_address(host)
        except ValueError:
            return  # a host name: the resolver checks its addresses
        if not public and not self._allow_private:
            raise UrlProblem("The URL names a non-public address.")

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            context = ssl.create_default_context()
            if self._ca_file is not None:
                context.load_verify_locations(cafile=str(self._ca_file))
            connector = aiohttp.TCPConnector(
                resolver=PublicAddressResolver(self._allow_private), ssl=context
            )
            self._client = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # no state between clients' downloads
                headers={"User-Agent": USER_AGENT},
                trust_env=False,
            )
        return self._client


def _https_url(url: str, *, redirected: bool = False) -> URL:
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise UrlProblem("The URL is malformed.") from None
    if parsed.scheme.lower() != "https" or not parsed.host:
        if redirected:
            raise UrlProblem("The URL redirected to a URL that is not https.")
        raise UrlProblem("Only https URLs (or data URLs) are accepted.")
    return parsed


async def _read_at_most(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    pieces: list[bytes] = []
    size = 0
    async for piece in response.content.iter_chunked(READ_CHUNK_BYTES):
        size += len(piece)
        if size > max_bytes:
            raise UrlProblem(f"The URL's content is larger than {max_bytes} bytes.")
        pieces.append(piece)
    return b"".join(pieces)
