"""`make bench`: what the platform costs around the model, measured against the reference.

Reference: llama-cpp-python's own `create_chat_completion` on the same GGUF, in this process.
Regio: the whole stack (gateway → billing hold → NATS → worker → JetStream settlement) started
in a temporary folder, driven by the official `openai` SDK. Same prompt, same machine, same run;
the two never run at the same time. Printed as a table with ratios (Regio / reference)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import openai

from regio_common.catalogue import Catalogue
from regio_common.logging import configure_logging
from regio_common.settings import DEFAULT_CATALOGUE, PROJECT_ROOT
from regio_devstack.processes import free_port
from regio_devstack.stack import Stack, StackConfig
from regio_worker.model_files import resolve_model_path

MESSAGES = [{"role": "user", "content": "Write three sentences about the North Sea."}]
MAX_TOKENS = 64
ROUNDS = 5


@dataclass
class Sample:
    seconds: float
    first_token_seconds: float
    completion_tokens: int


@dataclass
class Summary:
    name: str
    samples: list[Sample]

    @property
    def tokens_per_second(self) -> float:
        tokens = sum(s.completion_tokens for s in self.samples)
        return tokens / sum(s.seconds for s in self.samples)

    @property
    def first_token_ms(self) -> float:
        return statistics.median(s.first_token_seconds for s in self.samples) * 1000

    @property
    def latency_ms(self) -> float:
        return statistics.median(s.seconds for s in self.samples) * 1000


def measure_stream(chunks: Callable[[], Iterator[str]]) -> Sample:
    """Time one streamed generation; each non-empty delta counts as one token."""
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    for text in chunks():
        if text:
            tokens += 1
            if tokens == 1:
                first = time.perf_counter() - started
    return Sample(time.perf_counter() - started, first, tokens)


def reference(model_path: Path) -> Summary:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(model_path),
        n_ctx=2048,
        n_threads=os.cpu_count() or 1,
        chat_format="gemma",
        verbose=False,
    )

    def chunks() -> Iterator[str]:
        response = llm.create_chat_completion(
            messages=cast(Any, MESSAGES), max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
        for chunk in cast(Iterator[dict[str, Any]], response):
            yield chunk["choices"][0]["delta"].get("content") or ""

    measure_stream(chunks)  # warm-up
    return Summary("llama-cpp-python direct", [measure_stream(chunks) for _ in range(ROUNDS)])


def regio(stack: Stack, api_key: str) -> Summary:
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=api_key, max_retries=0)
    deadline = time.monotonic() + 5
    while not client.models.list().data:  # the new key reaches the gateway within a second
        if time.monotonic() > deadline:
            raise RuntimeError("the demo activation never reached the gateway")
        time.sleep(0.05)

    def chunks() -> Iterator[str]:
        stream = client.chat.completions.create(
            model="liv",
            messages=cast(Any, MESSAGES),
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            yield chunk.choices[0].delta.content or "" if chunk.choices else ""

    measure_stream(chunks)  # warm-up
    return Summary("Regio end to end", [measure_stream(chunks) for _ in range(ROUNDS)])


def table(ref: Summary, ours: Summary) -> str:
    rows = [
        ("tokens/s (streamed)", ref.tokens_per_second, ours.tokens_per_second, "{:.1f}"),
        ("time to first token, median ms", ref.first_token_ms, ours.first_token_ms, "{:.1f}"),
        ("request latency, median ms", ref.latency_ms, ours.latency_ms, "{:.1f}"),
    ]
    lines = [
        f"{'metric':<34}{ref.name:>26}{ours.name:>20}{'ratio':>9}",
        "-" * 89,
    ]
    for label, a, b, fmt in rows:
        ratio = b / a if a else float("nan")
        lines.append(f"{label:<34}{fmt.format(a):>26}{fmt.format(b):>20}{ratio:>9.2f}")
    return "\n".join(lines)


def main() -> None:
    configure_logging("bench", "warning", "console")
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    models_dir = PROJECT_ROOT / ".regio" / "models"
    model_path = resolve_model_path(catalogue.routes["liv"].source, models_dir)
    print(
        f"model: {model_path.name}; prompt {MESSAGES[0]['content']!r}; max_tokens={MAX_TOKENS};"
        f" {ROUNDS} rounds after a warm-up; {os.cpu_count()} cores"
    )
    ref = reference(model_path)
    with tempfile.TemporaryDirectory(prefix="regio-bench-") as folder:
        stack = Stack(
            StackConfig(
                data_dir=Path(folder),
                catalogue_path=DEFAULT_CATALOGUE,
                gateway_port=free_port(),
                dashboard_port=free_port(),
                billing_port=free_port(),
                models_dir=models_dir,
            ),
            say=lambda message: None,
        )
        stack.start()
        try:
            ours = regio(stack, stack.seed_demo().api_key)
        finally:
            stack.stop()
    print(table(ref, ours))


if __name__ == "__main__":
    main()
