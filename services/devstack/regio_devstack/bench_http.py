"""A lean HTTP/1.1 client for the bench's load loops: one kept-alive connection that sends a
request prepared once as bytes and reads the answer (Content-Length, chunked, or up to the
connection's end), handing each body piece over as it arrives.

Why not aiohttp's client: on this 2-core machine the load generator shares the cores with what
it measures, and aiohttp's client spent about 0.3-0.5 ms of CPU per request (URL objects,
header multidicts, timers, tracing hooks), a fifth of a core at 500 requests/s, taken from the
system under test. This client does the least HTTP/1.1 needs, as `hey` or `wrk` do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

# Status line and headers of an answer, at most (asyncio's StreamReader limit).
HEAD_LIMIT = 64 * 1024


def prepared_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """(host, port, request bytes) of a POST of `body` to `url` (http only)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"not an http:// URL: {url}")
    port = parts.port or 80
    path = parts.path or "/"
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpConnection:
    """One kept-alive connection, opened at the first request and again after any failure."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes, on_body: Callable[[bytes], None]) -> int:
        """Sends `request`, gives each piece of the answer's body to `on_body`, returns the
        status. On any error the connection is closed (the next request opens another)."""
        try:
            return await self._exchange(request, on_body)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, request: bytes, on_body: Callable[[bytes], None]) -> int:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, limit=HEAD_LIMIT
            )
        reader = self._reader
        self._writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get(b"transfer-encoding") == b"chunked":
            await _read_chunked(reader, on_body)
        elif b"content-length" in headers:
            on_body(await reader.readexactly(int(headers[b"content-length"])))
        else:  # delimited by the connection's end
            on_body(await reader.read())
            self.close()
        if headers.get(b"connection") == b"close":
            self.close()
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _read_chunked(reader: asyncio.StreamReader, on_body: Callable[[bytes], None]) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, if any
                pass
            return
        piece = await reader.readexactly(size + 2)  # the data and its CRLF
        on_body(piece[:-2])
