"""The two processes of `make bench-overhead` that are neither Regio nor LiteLLM.

- `upstream --port N`: a constant-answer OpenAI-compatible server (aiohttp). Non-streaming: one
  JSON completion with usage. Streaming: 8 content chunks, a finish chunk, a usage chunk, and
  `data: [DONE]`. It does no work, so whatever a proxy in front of it adds is the proxy's cost.
- `load '<json>'`: an asyncio aiohttp client that sends a fixed number of chat completions at a
  fixed concurrency and prints one JSON line of results (latencies, time to first content chunk,
  errors, the usage each answer reported).

Each runs in its own process, so neither shares an event loop (or a core's GIL) with the other
or with the bench's orchestration."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

PIECES = ["The ", "sea ", "is ", "wide ", "and ", "the ", "wind ", "blows."]
PROMPT_TOKENS = 12
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": len(PIECES),
    "total_tokens": PROMPT_TOKENS + len(PIECES),
}
MODEL = "bench-upstream"


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


def serve_upstream(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- the load client --------------------------------------------------------------------------
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
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    first_chunks: list[float] = []
    usages: list[list[int]] = []
    errors: Counter[str] = Counter()
    remaining = count

    async def one(session: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        first: float | None = None
        usage: dict[str, Any] | None = None
        text = ""
        try:
            async with session.post(url, data=payload, headers=headers) as response:
                if response.status != 200:
                    await response.read()
                    errors[f"http {response.status}"] += 1
                    return
                if stream:
                    async for line in response.content:
                        if not line.startswith(b"data: "):
                            continue
                        data = line[6:].strip()
                        if data == b"[DONE]":
                            break
                        event = json.loads(data)
                        if "error" in event:
                            errors["stream error event"] += 1
                            return
                        for choice in event.get("choices") or []:
                            piece = (choice.get("delta") or {}).get("content") or ""
                            if piece and first is None:
                                first = time.perf_counter() - started
                            text += piece
                        usage = event.get("usage") or usage
                else:
                    answer = await response.json()
                    text = answer["choices"][0]["message"]["content"] or ""
                    usage = answer.get("usage")
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as error:
            errors[type(error).__name__] += 1
            return
        if text != "".join(PIECES):
            errors["wrong answer"] += 1
            return
        if usage is None:
            errors["no usage"] += 1
            return
        latencies.append(time.perf_counter() - started)
        if first is not None:
            first_chunks.append(first)
        usages.append([int(usage["prompt_tokens"]), int(usage["completion_tokens"])])

    async def loop(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one(session)

    started = time.perf_counter()
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        for _ in range(concurrency)
    ]
    try:
        await asyncio.gather(*(loop(session) for session in sessions))
    finally:
        for session in sessions:
            await session.close()
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
        print(json.dumps(asyncio.run(run_load(**spec))))


if __name__ == "__main__":
    main()
