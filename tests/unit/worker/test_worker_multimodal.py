"""Media in the llama.cpp engine's prompts (multimodal.py), without a projector file: markers at
each part's place in the text, the prompt's token layout of text and media chunks (real
llama.cpp chunks from mtmd's test helper), prefix reuse at chunk boundaries, the route's token
bounds, and the refusal of media by a worker without a projector."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llama_cpp.mtmd_cpp as mtmd
import pytest

from regio_common.errors import INVALID_MEDIA, UNSUPPORTED_CONTENT
from regio_worker.engine.base import ChatMessage, GenerationRequest, MediaKind, MediaPart
from regio_worker.engine.multimodal import (
    Chunks,
    MediaMarkers,
    MediaPrompts,
    MediaRefused,
    MediaTokenBounds,
    chunk_layout,
    place_markers,
)

# mtmd_test_create_input_chunks(): a text chunk of tokens 1..5, then an image of 256 tokens.
TEST_TEXT_TOKENS = [1, 2, 3, 4, 5]
TEST_IMAGE_TOKENS = 256


def image(offset: int, data: bytes = b"png-bytes") -> MediaPart:
    return MediaPart(MediaKind.IMAGE, data, "image/png", offset)


def clip(offset: int) -> MediaPart:
    return MediaPart(MediaKind.AUDIO, b"wav-bytes", "audio/wav", offset)


def request(*messages: ChatMessage) -> GenerationRequest:
    return GenerationRequest(transaction_id="t-1", messages=messages)


def test_markers_go_where_the_parts_were_in_the_text() -> None:
    content = "Compare and tell"
    marked = place_markers(content, [image(8), image(0), clip(8)], ["<A>", "<B>", "<C>"])
    assert marked == "<B>Compare <A><C>and tell"
    # Offsets beyond the text (or negative) are clamped; characters, not bytes, are counted.
    assert place_markers("héllo", [image(99), image(-3), image(2)], ["<1>", "<2>", "<3>"]) == (
        "<2>hé<3>llo<1>"
    )


def test_a_request_is_marked_across_its_messages_and_clients_cannot_forge_markers() -> None:
    markers = MediaMarkers(nonce="abc")
    forged = MediaMarkers(nonce="xyz").marker(0)
    marked, media = markers.mark(
        request(
            ChatMessage("system", "Be brief."),
            ChatMessage("user", f"First {forged}", media=(image(6, b"one"),)),
            ChatMessage("user", "Then", media=(clip(0), image(4, b"two"))),
        )
    )
    contents = [message.content for message in marked.messages]
    assert contents == [
        "Be brief.",
        f"First {markers.marker(0)}{forged}",
        f"{markers.marker(1)}Then{markers.marker(2)}",
    ]
    assert all(not message.media for message in marked.messages)
    assert [part.data for part in media] == [b"one", b"wav-bytes", b"two"]
    text = contents[1] + contents[2]
    assert markers.indices_in(text) == [0, 1, 2]
    assert markers.for_projector(text).count(markers.projector_marker) == 3
    assert forged in markers.for_projector(text)  # the forged marker stays plain text


@pytest.fixture
def test_chunks() -> Chunks:
    return Chunks(mtmd.mtmd_test_create_input_chunks())


def test_the_prompt_layout_holds_text_tokens_and_a_sentinel_per_media_position(
    test_chunks: Chunks,
) -> None:
    layout = chunk_layout(test_chunks.handle)
    assert layout.tokens[:5] == TEST_TEXT_TOKENS
    media = layout.tokens[5:]
    assert len(media) == TEST_IMAGE_TOKENS
    assert len(set(media)) == 1 and media[0] < 0  # never a token of the vocabulary
    assert [(s.start, s.end) for s in layout.spans] == [(0, 5), (5, 5 + TEST_IMAGE_TOKENS)]
    assert layout.media_end == 5 + TEST_IMAGE_TOKENS
    test_chunks.close()


def test_prefix_reuse_stops_at_the_start_of_a_chunk_that_must_be_evaluated_whole(
    test_chunks: Chunks,
) -> None:
    layout = chunk_layout(test_chunks.handle)
    assert layout.reusable_prefix(0) == 0
    assert layout.reusable_prefix(3) == 0  # inside the text before the image
    assert layout.reusable_prefix(5) == 5
    assert layout.reusable_prefix(100) == 5  # inside the image
    assert layout.reusable_prefix(261) == 261  # past the last media: text is fed token-wise
    test_chunks.close()


class FakeBitmap:
    def __init__(self) -> None:
        self.handle: Any = object()
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeProjector:
    """Stands in for a loaded projector: tokenizes any text into mtmd's test chunks."""

    marker = "<__projector__>"
    context: Any = None

    def __init__(self, vision: bool = True, audio: bool = False) -> None:
        self.vision = vision
        self.audio = audio
        self.tokenized: list[tuple[str, int]] = []
        self.bitmaps: list[FakeBitmap] = []

    def supports(self, kind: MediaKind) -> bool:
        return self.vision if kind is MediaKind.IMAGE else self.audio

    def bitmap(self, part: MediaPart, media_id: str) -> FakeBitmap:
        self.bitmaps.append(FakeBitmap())
        return self.bitmaps[-1]

    def tokenize(self, text: str, bitmaps: Sequence[FakeBitmap], add_special: bool) -> Chunks:
        self.tokenized.append((text, len(bitmaps)))
        return Chunks(mtmd.mtmd_test_create_input_chunks())

    def close(self) -> None:
        return None


def text_tokens(text: str, add_bos: bool) -> list[int]:
    return [ord(character) for character in text]


def media_prompts(projector: FakeProjector | None, per_image: int = 300) -> MediaPrompts:
    bounds = MediaTokenBounds(per_image=per_image, per_audio_clip=100)
    return MediaPrompts(projector, text_tokens, bounds, MediaMarkers(nonce="n"))  # type: ignore[arg-type]


def test_text_with_media_markers_is_tokenized_by_the_projector() -> None:
    projector = FakeProjector()
    prompts = media_prompts(projector)
    with prompts.prepare(request(ChatMessage("user", "Look", media=(image(4),)))) as prepared:
        (content,) = [message.content for message in prepared.request.messages]
        tokens = prompts.tokenize(f"<turn>{content}<end>", True)
        # Text without markers (a count without the media's message) stays text.
        assert prompts.tokenize("plain", True) == text_tokens("plain", True)
    ((sent, bitmaps),) = projector.tokenized
    assert sent == f"<turn>Look{prompts.markers.projector_marker}<end>" and bitmaps == 1
    assert tokens[:5] == TEST_TEXT_TOKENS and len(tokens) == 5 + TEST_IMAGE_TOKENS
    # Bitmaps are freed when the prompt is built; other requests are tokenized as text again.
    assert all(bitmap.closed for bitmap in projector.bitmaps)
    assert prompts.tokenize("after", True) == text_tokens("after", True)


def test_an_item_over_the_routes_token_bound_is_refused() -> None:
    prompts = media_prompts(FakeProjector(), per_image=TEST_IMAGE_TOKENS - 1)
    with (
        pytest.raises(MediaRefused) as refused,
        prompts.prepare(request(ChatMessage("user", "x", media=(image(0),)))) as prepared,
    ):
        prompts.tokenize(prepared.request.messages[0].content, True)
    assert refused.value.code == INVALID_MEDIA
    assert "becomes 256 tokens; this route takes at most 255 per image" in str(refused.value)


def test_a_prompt_must_end_with_text_after_its_media() -> None:
    prompts = media_prompts(FakeProjector())
    with prompts.prepare(request(ChatMessage("user", "x", media=(image(0),)))) as prepared:
        tokens = prompts.tokenize(prepared.request.messages[0].content, True)
        with pytest.raises(ValueError, match="ends with media"):
            prepared.prompt(tokens)
        assert prepared.prompt(text_tokens("no media", True)) is None


@pytest.mark.parametrize(
    ("projector", "part", "words"),
    [
        (None, image(0), "cannot read images: its model has no multimodal projector"),
        (None, clip(0), "cannot read audio"),
        (FakeProjector(vision=True, audio=False), clip(0), "projector cannot read audio"),
        (FakeProjector(vision=False, audio=True), image(0), "projector cannot read images"),
    ],
)
def test_media_the_worker_cannot_read_are_refused_as_unsupported_content(
    projector: FakeProjector | None, part: MediaPart, words: str
) -> None:
    prompts = media_prompts(projector)
    with_media = request(ChatMessage("user", "What is this?", media=(part,)))
    refused = prompts.refusal(with_media)
    assert refused is not None and refused.code == UNSUPPORTED_CONTENT
    assert words in str(refused)
    with pytest.raises(MediaRefused), prompts.prepare(with_media):
        pass
    # Text-only requests are never refused, projector or not.
    assert prompts.refusal(request(ChatMessage("user", "Hi"))) is None
