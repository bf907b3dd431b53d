"""`make bench-model`: Regio's worker against the llama.cpp servers users would run instead, on
the same GGUF, threads, prompt and output length, one after the other in one run:

  (a) llama-cpp-python called directly in this process (single stream only);
  (b) llama-cpp-python's OpenAI server (`python -m llama_cpp.server`, one request at a time);
  (c) llama.cpp's `llama-server --parallel N`, built from the same llama.cpp version;
  (d) Regio end to end: gateway (key check, credit hold) → NATS → worker (continuous batching
      over N slots) → JetStream settlement.

Single stream: tokens/s and time to first token of all four. Then 1, 4, 8 and 16 concurrent
streams for (b), (c), (d): aggregate tokens/s and time to first token p50/p99, with the ratios
(d)/(b) and (d)/(c). The reference servers are made once in `.regio/bench/` (see
bench_references.py)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from regio_common.catalogue import Catalogue
from regio_common.logging import configure_logging
from regio_common.settings import DEFAULT_CATALOGUE, PROJECT_ROOT
from regio_devstack.bench_references import llama_cpp_python_server, llama_server_binary
from regio_devstack.bench_streams import LoadResult, StreamSample, run_streams
from regio_devstack.processes import ManagedProcess, free_port
from regio_devstack.stack import Stack, StackConfig
from regio_worker.model_files import resolve_model_path

MESSAGES = [{"role": "user", "content": "Write a long story about a dragon who lives by the sea."}]
MAX_TOKENS = 64
SINGLE_ROUNDS = 10
# Requests before the single-stream rounds (every server, (a) included): the first requests of
# a fresh process pay one-off costs (first use of code paths, caches, connections).
SINGLE_WARM_UP = 3
CONCURRENCY = (1, 4, 8, 16)
REQUESTS_PER_STREAM = 2
SLOTS = 8  # llama-server --parallel and Regio's worker slots
N_CTX_PER_SLOT = 2048
BODY: dict[str, Any] = {
    "messages": MESSAGES,
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
}


@dataclass(frozen=True)
class Server:
    name: str
    base_url: str  # ending in /v1
    api_key: str
    model: str


def direct_single_stream(model_path: Path, threads: int) -> LoadResult:
    """(a): create_chat_completion streamed in this process, the same way Llama users do."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(model_path),
        n_ctx=N_CTX_PER_SLOT,
        n_threads=threads,
        chat_format="gemma",
        verbose=False,
    )

    def one() -> tuple[float, float, int]:
        started = time.perf_counter()
        first = 0.0
        tokens = 0
        response = llm.create_chat_completion(
            messages=cast(Any, MESSAGES), max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
        for chunk in cast(Iterator[dict[str, Any]], response):
            if chunk["choices"][0]["delta"].get("content"):
                tokens += 1
                if tokens == 1:
                    first = time.perf_counter() - started
        return first, time.perf_counter() - started, tokens

    try:
        for _ in range(SINGLE_WARM_UP):
            one()
        started = time.perf_counter()
        samples = [StreamSample(*one()) for _ in range(SINGLE_ROUNDS)]
        return LoadResult(1, time.perf_counter() - started, samples, 0)
    finally:
        llm.close()


def measure(server: Server) -> dict[int, LoadResult]:
    body = {**BODY, "model": server.model}

    async def levels() -> dict[int, LoadResult]:
        await run_streams(server.base_url, server.api_key, body, 1, SINGLE_WARM_UP)
        results = {0: await run_streams(server.base_url, server.api_key, body, 1, SINGLE_ROUNDS)}
        for concurrency in CONCURRENCY:
            # Every stream once first, so that each level is measured with its slots in use.
            await run_streams(server.base_url, server.api_key, body, concurrency, 1)
            results[concurrency] = await run_streams(
                server.base_url, server.api_key, body, concurrency, REQUESTS_PER_STREAM
            )
        return results

    return asyncio.run(levels())


def _serving(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def with_process(
    process: ManagedProcess, ready_url: str, run: Callable[[], dict[int, LoadResult]]
) -> dict[int, LoadResult]:
    process.start()
    try:
        process.wait_until(lambda: _serving(ready_url), timeout=120, what="a listening server")
        return run()
    finally:
        process.stop()


def llama_cpp_python_results(
    python: Path, model_path: Path, threads: int, logs: Path
) -> dict[int, LoadResult]:
    port = free_port()
    process = ManagedProcess(
        "llama_cpp.server",
        [
            str(python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path),
            "--model_alias",
            "gemma",
            "--chat_format",
            "gemma",
            "--n_ctx",
            str(N_CTX_PER_SLOT),
            "--n_threads",
            str(threads),
            # Its default interrupts a running stream when a new request arrives; queue instead.
            "--interrupt_requests",
            "False",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        logs / "llama-cpp-python-server.log",
    )
    server = Server("llama-cpp-python server", f"http://127.0.0.1:{port}/v1", "none", "gemma")
    return with_process(process, f"{server.base_url}/models", lambda: measure(server))


def llama_server_results(
    binary: Path, model_path: Path, threads: int, logs: Path
) -> dict[int, LoadResult]:
    port = free_port()
    process = ManagedProcess(
        "llama-server",
        [
            str(binary),
            "--model",
            str(model_path),
            "--chat-template",
            "gemma",
            "--ctx-size",
            str(N_CTX_PER_SLOT * SLOTS),
            "--parallel",
            str(SLOTS),
            "--threads",
            str(threads),
            "--threads-batch",
            str(threads),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        logs / "llama-server.log",
    )
    server = Server(f"llama-server -np {SLOTS}", f"http://127.0.0.1:{port}/v1", "none", "gemma")
    return with_process(process, f"http://127.0.0.1:{port}/health", lambda: measure(server))


def regio_results(models_dir: Path, threads: int, data_dir: Path) -> dict[int, LoadResult]:
    stack = Stack(
        StackConfig(
            data_dir=data_dir,
            catalogue_path=DEFAULT_CATALOGUE,
            gateway_port=free_port(),
            dashboard_port=free_port(),
            billing_port=free_port(),
            models_dir=models_dir,
            extra_env={
                "REGIO_WORKER_SLOTS": str(SLOTS),
                "REGIO_WORKER_N_CTX": str(N_CTX_PER_SLOT),
                "REGIO_WORKER_THREADS": str(threads),
            },
        ),
        say=lambda message: None,
    )
    stack.start()
    try:
        demo = stack.seed_demo()
        server = Server("Regio", stack.gateway_url + "/v1", demo.api_key, "liv")
        _wait_for_key(server)
        return measure(server)
    finally:
        stack.stop()


def _wait_for_key(server: Server) -> None:
    """The new key reaches the gateway through NATS KV within a second."""
    request = urllib.request.Request(
        server.base_url + "/models", headers={"Authorization": f"Bearer {server.api_key}"}
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the demo key never reached the gateway")


def single_stream_table(rows: dict[str, LoadResult]) -> str:
    reference = rows["(a) llama-cpp-python direct"]
    lines = [
        f"{'single stream':<32}{'tokens/s':>10}{'TTFT p50 ms':>13}{'vs (a) tok/s':>14}"
        f"{'TTFT - (a) ms':>15}",
        "-" * 84,
    ]
    for name, result in rows.items():
        ratio = result.tokens_per_second / reference.tokens_per_second
        extra = result.first_token_ms(0.5) - reference.first_token_ms(0.5)
        lines.append(
            f"{name:<32}{result.tokens_per_second:>10.1f}{result.first_token_ms(0.5):>13.1f}"
            f"{ratio:>14.2f}{extra:>+15.1f}"
        )
    return "\n".join(lines)


def concurrency_table(
    python_server: dict[int, LoadResult],
    llama_server: dict[int, LoadResult],
    regio: dict[int, LoadResult],
) -> str:
    lines = [
        f"{'streams':>7} | {'(b) tok/s':>9} {'p50':>7} {'p99':>7} | {'(c) tok/s':>9} {'p50':>7} "
        f"{'p99':>7} | {'(d) tok/s':>9} {'p50':>7} {'p99':>7} | {'(d)/(b)':>7} {'(d)/(c)':>7}"
        f" | errors",
        "-" * 120,
    ]
    for concurrency in CONCURRENCY:
        b, c, d = python_server[concurrency], llama_server[concurrency], regio[concurrency]
        cells = []
        for result in (b, c, d):
            cells.append(
                f"{result.tokens_per_second:>9.1f} {result.first_token_ms(0.5):>7.0f} "
                f"{result.first_token_ms(0.99):>7.0f}"
            )
        lines.append(
            f"{concurrency:>7} | " + " | ".join(cells) + f" | "
            f"{d.tokens_per_second / b.tokens_per_second:>7.2f} "
            f"{d.tokens_per_second / c.tokens_per_second:>7.2f} | {b.errors}/{c.errors}/{d.errors}"
        )
    lines.append("TTFT p50/p99 in ms, aggregate tokens/s over all streams; errors (b)/(c)/(d).")
    return "\n".join(lines)


def main() -> None:
    configure_logging("bench", "warning", "console")
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    models_dir = PROJECT_ROOT / ".regio" / "models"
    cache_dir = PROJECT_ROOT / ".regio" / "bench"
    model_path = resolve_model_path(catalogue.routes["liv"].source, models_dir)
    threads = os.cpu_count() or 1
    binary = llama_server_binary(cache_dir, print)
    python = llama_cpp_python_server(cache_dir, print)
    print(
        f"model {model_path.name}; prompt {MESSAGES[0]['content']!r}; max_tokens {MAX_TOKENS}, "
        f"greedy; {threads} threads; {SLOTS} slots of {N_CTX_PER_SLOT} tokens for (c) and (d); "
        f"{SINGLE_ROUNDS} single-stream rounds after {SINGLE_WARM_UP} warm-up requests; "
        f"{REQUESTS_PER_STREAM} requests per stream under concurrency, after one request per "
        "stream"
    )
    with tempfile.TemporaryDirectory(prefix="regio-bench-") as folder:
        logs = Path(folder)
        direct = direct_single_stream(model_path, threads)
        python_server = llama_cpp_python_results(python, model_path, threads, logs)
        llama_server = llama_server_results(binary, model_path, threads, logs)
        regio = regio_results(models_dir, threads, logs / "stack")
    print()
    print(
        single_stream_table(
            {
                "(a) llama-cpp-python direct": direct,
                "(b) llama-cpp-python server": python_server[0],
                f"(c) llama-server -np {SLOTS}": llama_server[0],
                "(d) Regio end to end": regio[0],
            }
        )
    )
    print()
    print(concurrency_table(python_server, llama_server, regio))
    print(
        "Targets: (d) single stream >= 0.95 x (a) tok/s and TTFT within 10 ms of (a); at 8 and 16"
        " streams (d) >= 1.0 x (c) tok/s with p99 TTFT no worse than (c)."
    )


if __name__ == "__main__":
    main()
