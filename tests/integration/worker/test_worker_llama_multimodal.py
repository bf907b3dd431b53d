"""The llama.cpp engine and media, on the real Gemma 3 270M GGUF (a text model: no projector is
downloadable here). A worker without a projector refuses media with `unsupported_content` and
keeps serving text; a file that is no projector stops the worker at start."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from regio_common.catalogue import Route
from regio_common.errors import UNSUPPORTED_CONTENT
from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    MediaKind,
    MediaPart,
    TextDelta,
)
from regio_worker.engine.llama_batched import BatchedLlamaEngine
from regio_worker.engine.multimodal import ProjectorError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # never decoded: refused before


@pytest.fixture(scope="module")
async def engine(gemma_model_path: Path, gemma_route: Route) -> AsyncIterator[BatchedLlamaEngine]:
    loaded = BatchedLlamaEngine(
        gemma_model_path, chat_format=gemma_route.source.chat_format, n_ctx=512, n_threads=2
    )
    yield loaded
    await loaded.close()


def asking(*media: MediaPart) -> GenerationRequest:
    return GenerationRequest(
        transaction_id=f"txn-{uuid.uuid4().hex}",
        messages=(ChatMessage("user", "What is this?", media=media),),
        temperature=0.0,
        max_tokens=2,
    )


async def test_media_without_a_projector_are_refused_and_text_still_served(
    engine: BatchedLlamaEngine,
) -> None:
    for part, words in (
        (MediaPart(MediaKind.IMAGE, PNG, "image/png", 0), "cannot read images"),
        (MediaPart(MediaKind.AUDIO, b"RIFF....WAVE", "audio/wav", 4), "cannot read audio"),
    ):
        events = [event async for event in engine.generate(asking(part))]
        (final,) = events
        assert isinstance(final, GenerationFinished)
        assert final.finish_reason is FinishReason.ERROR
        assert final.error_code == UNSUPPORTED_CONTENT
        assert words in final.error_message and "mmproj_path" in final.error_message
        assert final.usage.completion_tokens == 0
    events = [event async for event in engine.generate(asking())]
    *deltas, final = events
    assert isinstance(final, GenerationFinished) and final.finish_reason is FinishReason.LENGTH
    assert all(isinstance(delta, TextDelta) for delta in deltas)
    assert final.usage.completion_tokens == 2


def test_a_file_that_is_no_projector_stops_the_engine_at_load(
    gemma_model_path: Path, gemma_route: Route
) -> None:
    with pytest.raises(ProjectorError, match="could not load the projector"):
        BatchedLlamaEngine(
            gemma_model_path,
            chat_format=gemma_route.source.chat_format,
            n_ctx=256,
            n_threads=2,
            mmproj_path=gemma_model_path,  # a text model's GGUF, not a projector
        )
