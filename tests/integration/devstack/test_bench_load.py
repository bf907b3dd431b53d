"""The bench's load client (bench_load.run_load over bench_http) against a real aiohttp server:
it reads JSON and chunked SSE answers over kept-alive connections, times the first content
piece, and counts what goes wrong instead of measuring it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from regio_devstack.bench_load import PIECES, PROMPT_TOKENS, run_load, upstream_app
from regio_devstack.processes import free_port

# serve(app) -> the URL of its chat completions, on a free port of loopback
Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("stream", [False, True])
async def test_every_answer_is_read_whole_on_kept_alive_connections(
    serve: Serve, stream: bool
) -> None:
    connections: set[object] = set()

    @web.middleware
    async def note_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
        connections.add(request.transport)
        return await handler(request)

    app = upstream_app()
    app.middlewares.append(note_connection)
    url = await serve(app)

    result = await run_load(url, "sk-test", "bench", stream, concurrency=4, count=200)

    assert result["errors"] == {}
    assert len(result["latencies"]) == 200
    assert result["usages"] == [[PROMPT_TOKENS, len(PIECES)]] * 200
    assert len(result["first_chunks"]) == (200 if stream else 0)
    assert len(connections) == 4  # one per loop, kept alive


async def test_failures_are_counted_not_measured(
    serve: Serve,
) -> None:
    answers = iter(["ok", "500", "wrong", "ok", "cut"])

    async def chat(request: web.Request) -> web.StreamResponse:
        kind = next(answers)
        if kind == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if kind == "cut":  # the connection ends in the middle of the body
            response = web.StreamResponse(headers={"Content-Length": "100"})
            await response.prepare(request)
            await response.write(b'{"choices": [')
            assert request.transport is not None
            request.transport.close()
            return response
        content = "".join(PIECES) if kind == "ok" else "something else"
        return web.json_response(
            {
                "choices": [{"message": {"content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    url = await serve(app)

    result = await run_load(url, "sk-test", "bench", False, concurrency=1, count=5)

    assert len(result["latencies"]) == 2
    assert result["errors"] == {"http 500": 1, "wrong answer": 1, "IncompleteReadError": 1}
