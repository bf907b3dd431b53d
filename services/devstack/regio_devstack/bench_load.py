"""The two processes of `make bench-overhead` that are neither Regio nor LiteLLM.

- `upstream --port N`: a constant-answer OpenAI-compatible server (aiohttp). Non-streaming: one
  JSON completion with usage. Streaming: 8 content chunks, a finish chunk, a usage chunk, and
  `data: [DONE]`. It does no work, so whatever a proxy in front of it adds is the proxy's cost.
- `load '<json>'`: an asyncio client (uvloop, the lean HTTP/1.1 of bench_http.py) that sends a
  fixed number of chat completions at a fixed concurrency and prints one JSON line of results
  (latencies, time to first content chunk, errors, the usage each answer reported).

Each runs in its own process, so neither shares an event loop (or a core's GIL) with the other
or with the bench's orchestration."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import uvloop
from aiohttp import web

from regio_devstack.bench_http import HttpConnection, prepared_post

PIECES = ["The ", "sea ", "is ", "wide ", "and ", "the ", "wind ", "blows."]
PROMPT_TOKENS = 12
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": len(PIECES),
    "total_tokens": PROMPT_TOKENS + len(PIECES),
}
MODEL = "bench-upstream"
# One request's limit; beyond it, it counts as an error and its connection is closed.
REQUEST_TIMEOUT_SECONDS = 60.0


# -- the upstream -----------------------------------------------------------------------------
def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_767_225_600,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


STREAM_CHUNKS = [
    _chunk({"role": "assistant", "content": PIECES[0]}),
    *(_chunk({"content": piece}) for piece in PIECES[1:]),
    _chunk({}, "stop"),
]
USAGE_CHUNK = (
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_767_225_600,
            "model": MODEL,
            "choices": [],
            "usage": USAGE,
        }
    ).encode()
    + b"\n\n"
)
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(PIECES)},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
).encode()


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for chunk in STREAM_CHUNKS:
        await response.write(chunk)
    await response.write(USAGE_CHUNK + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


def upstream_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    return app


def serve_upstream(port: int) -> None:
    web.run_app(upstream_app(), host="127.0.0.1", port=port, access_log=None, print=None)


# -- the load client --------------------------------------------------------------------------
class _Answer:
    """What one answer said, read piece by piece as its body arrives."""

    def __init__(self, stream: bool, started: float) -> None:
        self._stream = stream
        self._started = started
        self._pending = b""
        self._body: list[bytes] = []
        self.first: float | None = None  # seconds to the first content piece
        self.text = ""
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None

    def take(self, piece: bytes) -> None:
        if not self._stream:
            self._body.append(piece)
            return
        lines = (self._pending + piece).split(b"\n")
        self._pending = lines.pop()  # an unfinished line waits for the next piece
        for line in lines:
            self._event(line)

    def _event(self, line: bytes) -> None:
        if not line.startswith(b"data: ") or self.error is not None:
            return
        data = line[6:].strip()
        if data == b"[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            self.error = "stream error event"
            return
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") or ""
            if piece and self.first is None:
                self.first = time.perf_counter() - self._started
            self.text += piece
        self.usage = event.get("usage") or self.usage

    def finish(self) -> None:
        if self._stream:
            self._event(self._pending)
            return
        answer = json.loads(b"".join(self._body))
        self.text = answer["choices"][0]["message"]["content"] or ""
        self.usage = answer.get("usage")


async def run_load(
    url: str, api_key: str, model: str, stream: bool, concurrency: int, count: int
) -> dict[str, Any]:
    """`count` requests from `concurrency` loops, each with its own kept-alive connection."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say something about the sea."}],
        "max_tokens": 16,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    host, port, request = prepared_post(
        url,
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    latencies: list[float] = []
    first_chunks: list[float] = []
    usages: list[list[int]] = []
    errors: Counter[str] = Counter()
    remaining = count

    async def one(connection: HttpConnection) -> None:
        started = time.perf_counter()
        answer = _Answer(stream, started)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                status = await connection.exchange(request, answer.take)
            if status != 200:
                errors[f"http {status}"] += 1
                return
            answer.finish()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, KeyError) as error:
            connection.close()
            errors[type(error).__name__] += 1
            return
        if answer.error is not None:
            errors[answer.error] += 1
            return
        if answer.text != "".join(PIECES):
            errors["wrong answer"] += 1
            return
        if answer.usage is None:
            errors["no usage"] += 1
            return
        latencies.append(time.perf_counter() - started)
        if answer.first is not None:
            first_chunks.append(answer.first)
        usages.append([int(answer.usage["prompt_tokens"]), int(answer.usage["completion_tokens"])])

    async def loop(connection: HttpConnection) -> None:
        nonlocal remaining
        try:
            while remaining > 0:
                remaining -= 1
                await one(connection)
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(loop(HttpConnection(host, port)) for _ in range(concurrency)))
    return {
        "elapsed": time.perf_counter() - started,
        "latencies": latencies,
        "first_chunks": first_chunks,
        "usages": usages,
        "errors": dict(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="regio_devstack.bench_load")
    commands = parser.add_subparsers(dest="command", required=True)
    upstream = commands.add_parser("upstream")
    upstream.add_argument("--port", type=int, required=True)
    load = commands.add_parser("load")
    load.add_argument("spec", help="JSON: url, api_key, model, stream, concurrency, count")
    args = parser.parse_args()
    if args.command == "upstream":
        serve_upstream(args.port)
    else:
        spec = json.loads(args.spec)
        print(json.dumps(uvloop.run(run_load(**spec))))


if __name__ == "__main__":
    main()
