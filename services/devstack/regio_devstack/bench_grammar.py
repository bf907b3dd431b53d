"""What grammar-constrained decoding costs in the llama.cpp engine: decode speed of the dev
route's model on free text and on a required tool call (the call's JSON follows a grammar),
greedy, one stream, same prompt and output length. `python -m regio_devstack.bench_grammar`."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from regio_common.catalogue import Catalogue
from regio_common.settings import DEFAULT_CATALOGUE, PROJECT_ROOT
from regio_worker.engine.base import (
    ChatMessage,
    GenerationFinished,
    GenerationRequest,
    ToolChoiceMode,
    ToolDefinition,
)
from regio_worker.engine.llama_batched import BatchedLlamaEngine
from regio_worker.model_files import resolve_model_path

OUTPUT_TOKENS = 64
RUNS = 5  # the first warms the caches and is left out
PROMPT = "Describe the weather in Paris in detail, with a long note."
WEATHER = ToolDefinition(
    "get_weather",
    "Get the current weather in a city",
    json.dumps(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "note": {"type": "string"}},
            "required": ["city", "note"],
        }
    ),
)
CASES: dict[str, dict[str, Any]] = {
    "free text": {},
    "tool call (grammar)": {"tools": (WEATHER,), "tool_choice": ToolChoiceMode.REQUIRED},
}


async def decode_rate(engine: BatchedLlamaEngine, fields: dict[str, Any]) -> float:
    """Completion tokens per second after the first token (prompt excluded)."""
    request = GenerationRequest(
        transaction_id=uuid.uuid4().hex,
        messages=(ChatMessage("user", PROMPT),),
        max_tokens=OUTPUT_TOKENS,
        temperature=0.0,
        **fields,
    )
    first: float | None = None
    finished: GenerationFinished | None = None
    async for event in engine.generate(request):
        first = first or time.perf_counter()
        if isinstance(event, GenerationFinished):
            finished = event
    assert first is not None and finished is not None
    return (finished.usage.completion_tokens - 1) / (time.perf_counter() - first)


async def main() -> None:
    route = Catalogue.load(DEFAULT_CATALOGUE).routes["liv"]
    engine = BatchedLlamaEngine(
        resolve_model_path(route.source, PROJECT_ROOT / ".regio" / "models"),
        chat_format=route.source.chat_format,
        n_ctx=2048,
        n_threads=2,
        slots=1,
    )
    try:
        rates = {}
        for name, fields in CASES.items():
            runs = [await decode_rate(engine, fields) for _ in range(RUNS)]
            rates[name] = statistics.median(runs[1:])
    finally:
        await engine.close()
    reference = rates["free text"]
    print(f"{'case':<22}{'tokens/s':>10}{'ratio':>8}")
    for name, rate in rates.items():
        print(f"{name:<22}{rate:>10.1f}{rate / reference:>8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
