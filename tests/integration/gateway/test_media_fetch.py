"""Downloading media URLs from a real local HTTPS server (a self-signed certificate made by the
`openssl` command for this session): what is accepted, what is refused and why, and that the
address check and the certificate check hold."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Capabilities, Catalogue
from regio_common.errors import InvalidRequest
from regio_common.settings import DEFAULT_CATALOGUE
from regio_gateway.media.fetch import MediaFetcher
from regio_gateway.media.loader import MediaLoader
from regio_gateway.media.problems import UrlProblem
from regio_gateway.media.settings import MediaSettings
from regio_gateway.protocol.chat_completion import ChatCompletionRequest
from tests.unit.gateway import media_samples as samples

LIMIT = 100_000


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return Certificate(cert, key)


def media_app(released: asyncio.Event) -> web.Application:
    png = samples.png(40, 30)

    async def cat(request: web.Request) -> web.Response:
        return web.Response(body=png, content_type="image/png")

    async def unlabelled(request: web.Request) -> web.Response:
        return web.Response(body=png, content_type="application/octet-stream")

    async def document(request: web.Request) -> web.Response:
        return web.Response(body=samples.pdf(2), content_type="application/pdf")

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>login</html>", content_type="text/html")

    async def big(request: web.Request) -> web.StreamResponse:
        # Streamed without a Content-Length: the size cap must hold while reading.
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        for _ in range(20):
            await response.write(b"\x89PNG" + b"\x00" * 10_000)
        return response

    async def to_http(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{request.url.port}/cat.png")

    async def to_https(request: web.Request) -> web.Response:
        raise web.HTTPFound("/cat.png")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def slow(request: web.Request) -> web.Response:
        await released.wait()  # set when the server stops
        return web.Response()

    app = web.Application()
    for path, handler in {
        "/cat.png": cat,
        "/unlabelled": unlabelled,
        "/doc.pdf": document,
        "/page.html": html,
        "/big.png": big,
        "/to-http": to_http,
        "/to-https": to_https,
        "/loop": loop,
        "/slow": slow,
    }.items():
        app.router.add_get(path, handler)
    return app


@pytest.fixture
async def server(certificate: Certificate) -> AsyncIterator[str]:
    """Base URL of the HTTPS server (127.0.0.1)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert, certificate.key)
    released = asyncio.Event()
    runner = web.AppRunner(media_app(released))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}"
    released.set()
    await runner.cleanup()


@pytest.fixture
def settings(certificate: Certificate) -> MediaSettings:
    return MediaSettings(
        media_fetch_allow_private_addresses=True,
        media_fetch_ca_file=certificate.cert,
        media_fetch_timeout_seconds=1.0,
        media_fetch_max_redirects=2,
    )


@pytest.fixture
async def fetcher(settings: MediaSettings) -> AsyncIterator[MediaFetcher]:
    fetcher = fetcher_for(settings)
    yield fetcher
    await fetcher.close()


def fetcher_for(settings: MediaSettings) -> MediaFetcher:
    return MediaFetcher(
        timeout_seconds=settings.media_fetch_timeout_seconds,
        max_redirects=settings.media_fetch_max_redirects,
        allow_private_addresses=settings.media_fetch_allow_private_addresses,
        ca_file=settings.media_fetch_ca_file,
    )


async def test_an_image_url_is_downloaded(fetcher: MediaFetcher, server: str) -> None:
    fetched = await fetcher.fetch(f"{server}/cat.png", LIMIT)
    assert fetched.data == samples.png(40, 30)
    assert fetched.content_type == "image/png"
    # A redirect to another https URL is followed.
    assert (await fetcher.fetch(f"{server}/to-https", LIMIT)).data == fetched.data


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/nowhere.png", "HTTP status 404"),
        ("/to-http", "redirected to a URL that is not https"),
        ("/loop", "redirected more than 2 times"),
        ("/big.png", f"larger than {LIMIT} bytes"),
        ("/slow", "longer than 1 seconds"),
    ],
)
async def test_failed_downloads_are_client_errors_with_a_reason(
    fetcher: MediaFetcher, server: str, path: str, words: str
) -> None:
    with pytest.raises(UrlProblem) as refused:
        await fetcher.fetch(server + path, LIMIT)
    assert words in refused.value.message
    assert refused.value.code == "invalid_image_url"


async def test_private_addresses_are_refused_unless_allowed(
    settings: MediaSettings, server: str
) -> None:
    guarded = fetcher_for(
        settings.model_copy(update={"media_fetch_allow_private_addresses": False})
    )
    port = server.rsplit(":", 1)[1]
    try:
        with pytest.raises(UrlProblem, match="non-public address"):
            await guarded.fetch(f"{server}/cat.png", LIMIT)
        # A host name is checked on the addresses it resolves to.
        with pytest.raises(UrlProblem, match="does not resolve to a public address"):
            await guarded.fetch(f"https://localhost:{port}/cat.png", LIMIT)
    finally:
        await guarded.close()


async def test_an_untrusted_certificate_is_refused(settings: MediaSettings, server: str) -> None:
    strict = fetcher_for(settings.model_copy(update={"media_fetch_ca_file": None}))
    try:
        with pytest.raises(UrlProblem, match="certificate is not trusted"):
            await strict.fetch(f"{server}/cat.png", LIMIT)
    finally:
        await strict.close()


async def test_downloaded_media_are_checked_and_converted(
    settings: MediaSettings, server: str
) -> None:
    route = Catalogue.load(DEFAULT_CATALOGUE).routes["liv"]
    route = route.model_copy(update={"capabilities": Capabilities(vision=True)})
    loader = MediaLoader(settings, fetcher_for(settings))

    def request(*urls: str) -> ChatCompletionRequest:
        parts = [{"type": "image_url", "image_url": {"url": server + url}} for url in urls]
        return ChatCompletionRequest.parse(
            {"model": "liv", "messages": [{"role": "user", "content": parts}]}
        )

    try:
        media = await loader.for_request(request("/unlabelled", "/doc.pdf")).for_route(route)
        parts = media.by_message[0]
        assert [part.mime_type for part in parts] == ["image/png"] * 3  # the PDF's two pages
        assert parts[0].data == samples.png(40, 30)
        assert all(part.kind == inference_pb2.MediaPart.KIND_IMAGE for part in parts)

        with pytest.raises(InvalidRequest) as refused:
            await loader.for_request(request("/cat.png", "/page.html")).for_route(route)
        assert refused.value.param == "messages[0].content[1]"
        assert "Expected an image or a PDF, got text/html" in refused.value.message
    finally:
        await loader.close()
