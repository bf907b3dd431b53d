"""Images and audio in prompts, through llama.cpp's multimodal projector (mtmd, `mmproj` GGUF).

How a request with media becomes a prompt:
1. Each media part gets a marker of its own, `<__regio_media_<nonce>_<i>__>`, in its message's
   content at its `text_offset` (the nonce is random per process, so a client cannot write one).
2. The chat prompt is built as for text (chat format, free system prompt, middle-out), with
   `MediaPrompts.tokenize` as its tokenizer: text holding markers is tokenized by
   `mtmd_tokenize` with the bitmaps of exactly the markers it holds (middle-out may have left
   some messages out), which yields text chunks and media chunks.
3. The prompt's token list has the text tokens as they are and, for each position of a media
   chunk, a negative "sentinel" derived from the media's bytes: never a real token, and equal
   only for the same media at the same place, so the scheduler's prefix reuse (a follow-up
   question about the same picture) stays correct. Billing counts these positions as prompt
   tokens, as llama-server does.
4. At admission (batch_scheduler `_admit`), `MediaPrompt.evaluate` runs every chunk up to the
   last media chunk into the slot's sequence with `mtmd_helper_eval_chunk_single` (images are
   encoded by the projector, then decoded as embeddings); the text after it is prefilled in the
   shared batches like any prompt. Reuse of a cached prefix is cut back to a chunk boundary.

Limits: an item becoming more tokens than the route's bound (`tokens_per_image`,
`tokens_per_audio_clip`; the gateway's credit hold counts them) is refused with
INVALID_MEDIA; projectors with M-RoPE positions (Qwen2-VL family), whose positions are not one
per token, are refused at start. Media evaluation runs in the scheduler thread: the other
streams of the worker pause while an image is encoded."""

from __future__ import annotations

import ctypes
import hashlib
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import structlog

from regio_common.errors import INVALID_MEDIA, UNSUPPORTED_CONTENT
from regio_worker.engine.base import ChatMessage, GenerationRequest, MediaKind, MediaPart

log = structlog.get_logger()

Tokenize = Callable[[str, bool], list[int]]  # (text, add_bos) -> tokens, special tokens parsed
SENTINEL_BITS = 62  # sentinels are -1 - (62-bit hash): far from any vocabulary


class MediaRefused(Exception):
    """The request's media cannot be used on this worker; `code` is the error code the gateway
    maps (UNSUPPORTED_CONTENT: no projector for it; INVALID_MEDIA: this item)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ProjectorError(RuntimeError):
    """The projector file cannot be used with this model."""


@dataclass(frozen=True)
class MediaTokenBounds:
    """Most prompt tokens one image and one audio clip may become (the route's bounds)."""

    per_image: int
    per_audio_clip: int

    def of(self, kind: MediaKind) -> int:
        return self.per_image if kind is MediaKind.IMAGE else self.per_audio_clip


# --- markers (pure) ------------------------------------------------------------------------


def place_markers(content: str, media: Sequence[MediaPart], markers: Sequence[str]) -> str:
    """`content` with `markers[i]` inserted at `media[i].text_offset` (clamped to the text);
    parts at the same offset keep their order."""
    pieces: list[str] = []
    position = 0
    placed = sorted(
        range(len(media)), key=lambda i: (min(max(media[i].text_offset, 0), len(content)), i)
    )
    for index in placed:
        offset = min(max(media[index].text_offset, 0), len(content))
        pieces.append(content[position:offset])
        pieces.append(markers[index])
        position = offset
    pieces.append(content[position:])
    return "".join(pieces)


class MediaMarkers:
    """Markers naming the media parts of a request by their index, unguessable by clients."""

    def __init__(self, nonce: str | None = None) -> None:
        self.nonce = nonce or secrets.token_hex(8)
        self._pattern = re.compile(rf"<__regio_media_{self.nonce}_(\d+)__>")

    def marker(self, index: int) -> str:
        return f"<__regio_media_{self.nonce}_{index}__>"

    @property
    def projector_marker(self) -> str:
        """The one marker the projector splits the text at."""
        return f"<__regio_media_{self.nonce}__>"

    def mark(self, request: GenerationRequest) -> tuple[GenerationRequest, list[MediaPart]]:
        """The request with each message's media as markers in its content, and the media in
        marker order."""
        media: list[MediaPart] = []
        messages: list[ChatMessage] = []
        for message in request.messages:
            if not message.media:
                messages.append(message)
                continue
            markers = [self.marker(len(media) + i) for i in range(len(message.media))]
            content = place_markers(message.content, message.media, markers)
            messages.append(replace(message, content=content, media=()))
            media.extend(message.media)
        return replace(request, messages=tuple(messages)), media

    def indices_in(self, text: str) -> list[int]:
        """The media indices of the markers in `text`, in order."""
        return [int(match.group(1)) for match in self._pattern.finditer(text)]

    def for_projector(self, text: str) -> str:
        return self._pattern.sub(self.projector_marker, text)


def request_media(request: GenerationRequest) -> list[MediaPart]:
    return [part for message in request.messages for part in message.media]


# --- chunk layout (reads tokenized chunks; no model or context needed) -----------------------


@dataclass(frozen=True)
class ChunkSpan:
    """Positions [start, end) of one chunk in the prompt."""

    index: int  # in the chunk list
    start: int
    end: int
    media_id: str  # "" for text; the bitmap's id ("<index>/<digest>") for image and audio


@dataclass(frozen=True)
class ChunkLayout:
    tokens: list[int]  # text tokens, and a sentinel for each media position
    spans: list[ChunkSpan]
    media_spans: list[ChunkSpan]

    @property
    def media_end(self) -> int:
        """End of the last media chunk (0 without media)."""
        return max((span.end for span in self.media_spans), default=0)

    def reusable_prefix(self, reused: int) -> int:
        """`reused` cut back to the start of its chunk when it lies inside one that must be
        evaluated whole (any chunk up to the last media chunk)."""
        if reused >= self.media_end:
            return reused
        for span in self.spans:
            if span.start <= reused < span.end:
                return span.start
        return reused


def sentinel(content_id: str, ordinal: int) -> int:
    """The placeholder token of the positions of one media chunk (`ordinal`: which chunk of
    that media, for projectors that slice an image into several)."""
    digest = hashlib.sha256(f"{content_id}#{ordinal}".encode()).digest()
    return -1 - (int.from_bytes(digest[:8], "big") >> (64 - SENTINEL_BITS))


def chunk_layout(chunks: Any) -> ChunkLayout:
    """The token list and chunk positions of tokenized chunks (an `mtmd_input_chunks *`)."""
    tokens: list[int] = []
    spans: list[ChunkSpan] = []
    media_spans: list[ChunkSpan] = []
    ordinals: dict[str, int] = {}
    for index in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, index)
        start = len(tokens)
        if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            count = ctypes.c_size_t()
            pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
            tokens.extend(int(pointer[i]) for i in range(count.value))
            spans.append(ChunkSpan(index, start, len(tokens), ""))
            continue
        n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        n_pos = mtmd.mtmd_input_chunk_get_n_pos(chunk)
        if n_pos != n_tokens:
            raise ProjectorError("media chunks whose positions differ from their tokens")
        media_id = (mtmd.mtmd_input_chunk_get_id(chunk) or b"").decode() or f"chunk-{index}"
        ordinal = ordinals.get(media_id, 0)
        ordinals[media_id] = ordinal + 1
        # From the media's digest, not its index in this request: the same picture at the same
        # place of a later conversation turn gets the same sentinels.
        tokens.extend([sentinel(media_id.rsplit("/", 1)[-1], ordinal)] * n_pos)
        span = ChunkSpan(index, start, len(tokens), media_id)
        spans.append(span)
        media_spans.append(span)
    return ChunkLayout(tokens, spans, media_spans)


# --- native: the projector, tokenized prompts ------------------------------------------------


class Projector:
    """A multimodal projector loaded next to the text model (blocking, like the model)."""

    def __init__(
        self,
        path: Path,
        model: llama_cpp.llama_model_p,
        *,
        marker: str,
        n_threads: int,
        use_gpu: bool,
        image_max_tokens: int,
    ) -> None:
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self._marker_bytes = marker.encode()  # kept alive: the struct points at it
        params.media_marker = self._marker_bytes
        # Projectors with dynamic resolution: never more tokens than the route's bound.
        params.image_max_tokens = image_max_tokens
        context = mtmd.mtmd_init_from_file(str(path).encode(), model, params)
        if not context:
            raise ProjectorError(f"llama.cpp could not load the projector {path}")
        self.context = context
        if mtmd.mtmd_decode_use_mrope(context):
            self.close()
            raise ProjectorError(
                f"the projector {path} uses M-RoPE positions, which this worker does not support"
            )
        self.vision: bool = mtmd.mtmd_support_vision(context)
        self.audio: bool = mtmd.mtmd_support_audio(context)
        self.marker = (mtmd.mtmd_get_marker(context) or self._marker_bytes).decode()
        log.info("projector_loaded", path=str(path), vision=self.vision, audio=self.audio)

    def supports(self, kind: MediaKind) -> bool:
        return self.vision if kind is MediaKind.IMAGE else self.audio

    def bitmap(self, part: MediaPart, media_id: str) -> Bitmap:
        """The decoded image or audio (stb_image / miniaudio in llama.cpp)."""
        buffer = (ctypes.c_uint8 * len(part.data)).from_buffer_copy(part.data)
        handle = mtmd.mtmd_helper_bitmap_init_from_buf(self.context, buffer, len(part.data), False)
        if not handle:
            raise MediaRefused(
                f"The {part.kind.value} ({part.mime_type}) cannot be decoded.", INVALID_MEDIA
            )
        bitmap = Bitmap(handle)
        if mtmd.mtmd_bitmap_is_audio(handle) != (part.kind is MediaKind.AUDIO):
            bitmap.close()
            raise MediaRefused(
                f"The {part.kind.value} ({part.mime_type}) decodes as another kind of media.",
                INVALID_MEDIA,
            )
        mtmd.mtmd_bitmap_set_id(handle, media_id.encode())
        return bitmap

    def tokenize(self, text: str, bitmaps: Sequence[Bitmap], add_special: bool) -> Chunks:
        """Text with one projector marker per bitmap, as text and media chunks."""
        encoded = text.encode()
        text_input = mtmd.mtmd_input_text()
        text_input.text = encoded
        text_input.text_len = len(encoded)
        text_input.add_special = add_special
        text_input.parse_special = True
        chunks = Chunks(mtmd.mtmd_input_chunks_init())
        handles = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*(b.handle for b in bitmaps))
        result = mtmd.mtmd_tokenize(
            self.context, chunks.handle, ctypes.byref(text_input), handles, len(bitmaps)
        )
        if result != 0:
            chunks.close()
            # 1: markers and media do not match (a bug of ours); 2: preprocessing failed.
            raise MediaRefused(
                f"The media could not be prepared for the model (mtmd_tokenize {result}).",
                INVALID_MEDIA,
            )
        return chunks

    def close(self) -> None:
        if self.context:
            mtmd.mtmd_free(self.context)
            self.context = None


class Bitmap:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def close(self) -> None:
        if self.handle:
            mtmd.mtmd_bitmap_free(self.handle)
            self.handle = None


class Chunks:
    """An owned `mtmd_input_chunks *`, freed once (by `close`, or when garbage)."""

    def __init__(self, handle: Any) -> None:
        if not handle:
            raise MemoryError("mtmd_input_chunks_init failed")
        self.handle = handle
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.handle:
                mtmd.mtmd_input_chunks_free(self.handle)
                self.handle = None

    def __del__(self) -> None:
        self.close()


class MediaPrompt:
    """The media chunks of one generation's prompt, evaluated into its slot at admission (in
    the scheduler thread). The scheduler only needs `reusable_prefix` and `evaluate`."""

    def __init__(self, projector: Projector, chunks: Chunks, layout: ChunkLayout) -> None:
        self._projector = projector
        self._chunks = chunks
        self._layout = layout

    def reusable_prefix(self, reused: int) -> int:
        return self._layout.reusable_prefix(reused)

    def evaluate(
        self, context: llama_cpp.llama_context_p, seq_id: int, start: int, n_batch: int
    ) -> int:
        """Evaluate the chunks from `start` (a chunk boundary) to the end of the last media
        chunk into sequence `seq_id`; returns that end (the position the text prefill goes on
        from). Frees the chunks: a prompt is evaluated once."""
        layout = self._layout
        try:
            if start >= layout.media_end:
                return start
            for span in layout.spans:
                if span.end <= start:
                    continue
                if span.start >= layout.media_end:
                    break
                self._evaluate_chunk(context, seq_id, span, n_batch)
            return layout.media_end
        finally:
            self._chunks.close()

    def close(self) -> None:
        self._chunks.close()

    def _evaluate_chunk(
        self, context: llama_cpp.llama_context_p, seq_id: int, span: ChunkSpan, n_batch: int
    ) -> None:
        chunk = mtmd.mtmd_input_chunks_get(self._chunks.handle, span.index)
        size = span.end - span.start
        if (
            span.media_id
            and size > n_batch
            and mtmd.mtmd_decode_use_non_causal(self._projector.context, chunk)
        ):
            raise RuntimeError(
                f"a media chunk of {size} tokens needs one batch (REGIO_WORKER_N_BATCH is "
                f"{n_batch})"
            )
        reached = llama_cpp.llama_pos(0)
        result = mtmd.mtmd_helper_eval_chunk_single(
            self._projector.context,
            context,
            chunk,
            span.start,
            seq_id,
            n_batch,
            False,
            ctypes.byref(reached),
        )
        if result != 0 or reached.value != span.end:
            raise RuntimeError(f"evaluating a prompt chunk failed ({result})")


class MediaPreparation:
    """The media of one request while its prompt is built (see `MediaPrompts.prepare`)."""

    def __init__(
        self,
        request: GenerationRequest,
        media: list[MediaPart],
        prompts: MediaPrompts,
    ) -> None:
        self.request = request  # the messages carry markers instead of media
        self._media = media
        self._prompts = prompts
        self._bitmaps: dict[int, Bitmap] = {}
        self._candidates: list[tuple[list[int], Chunks, ChunkLayout]] = []

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        markers = self._prompts.markers
        indices = markers.indices_in(text)
        if not indices:
            return self._prompts.tokenize_text(text, add_bos)
        projector = self._prompts.projector
        assert projector is not None  # prepare() refused media without one
        bitmaps = [self._bitmap(projector, index) for index in indices]
        chunks = projector.tokenize(markers.for_projector(text), bitmaps, add_bos)
        try:
            layout = chunk_layout(chunks.handle)
            self._check_bounds(layout, indices)
        except BaseException:
            chunks.close()
            raise
        self._candidates.append((layout.tokens, chunks, layout))
        return layout.tokens

    def prompt(self, tokens: list[int]) -> MediaPrompt | None:
        """The media of the prompt whose tokens are `tokens` (None: it holds no media, e.g.
        middle-out left them out)."""
        projector = self._prompts.projector
        for index, (candidate, chunks, layout) in enumerate(self._candidates):
            if candidate == tokens and layout.media_spans and projector is not None:
                if layout.media_end >= len(tokens):
                    # The text prefill samples the first token: some text must follow.
                    raise ValueError("the chat prompt ends with media instead of text")
                del self._candidates[index]
                return MediaPrompt(projector, chunks, layout)
        return None

    def close(self) -> None:
        for bitmap in self._bitmaps.values():
            bitmap.close()
        for _, chunks, _ in self._candidates:
            chunks.close()
        self._bitmaps.clear()
        self._candidates.clear()

    def _bitmap(self, projector: Projector, index: int) -> Bitmap:
        bitmap = self._bitmaps.get(index)
        if bitmap is None:
            part = self._media[index]
            digest = hashlib.sha256(part.data).hexdigest()[:32]
            bitmap = projector.bitmap(part, f"{index}/{digest}")
            self._bitmaps[index] = bitmap
        return bitmap

    def _check_bounds(self, layout: ChunkLayout, indices: Sequence[int]) -> None:
        """Each item within its route's token bound. The media chunks come in marker order, one
        or more (slices of an image) per item, and carry the item's bitmap id."""
        tokens: dict[str, int] = {}
        for span in layout.media_spans:
            tokens[span.media_id] = tokens.get(span.media_id, 0) + span.end - span.start
        if len(tokens) != len(indices):
            raise RuntimeError(f"{len(indices)} media gave chunks of {len(tokens)} media")
        bounds = self._prompts.bounds
        for count, index in zip(tokens.values(), indices, strict=True):
            part = self._media[index]
            if count > bounds.of(part.kind):
                what = "image" if part.kind is MediaKind.IMAGE else "audio clip"
                raise MediaRefused(
                    f"One {what} of the request becomes {count} tokens; this route takes at "
                    f"most {bounds.of(part.kind)} per {what}.",
                    INVALID_MEDIA,
                )


class MediaPrompts:
    """The engine's side of media: the tokenizer of its chat prompts (text as usual; text with
    media markers through the projector) and the per-request preparation."""

    def __init__(
        self,
        projector: Projector | None,
        tokenize_text: Tokenize,
        bounds: MediaTokenBounds,
        markers: MediaMarkers,
    ) -> None:
        self.projector = projector
        self.tokenize_text = tokenize_text
        self.bounds = bounds
        self.markers = markers
        self._active: MediaPreparation | None = None

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        if self._active is None:
            return self.tokenize_text(text, add_bos)
        return self._active.tokenize(text, add_bos)

    def refusal(self, request: GenerationRequest) -> MediaRefused | None:
        """Why this worker cannot take the request's media at all (None: it can, or there are
        none)."""
        for part in request_media(request):
            if self.projector is None:
                return MediaRefused(
                    f"This worker cannot read {_plural(part.kind)}: its model has no "
                    "multimodal projector (catalogue: source.mmproj_path).",
                    UNSUPPORTED_CONTENT,
                )
            if not self.projector.supports(part.kind):
                return MediaRefused(
                    f"This worker's multimodal projector cannot read {_plural(part.kind)}.",
                    UNSUPPORTED_CONTENT,
                )
        return None

    @contextmanager
    def prepare(self, request: GenerationRequest) -> Iterator[MediaPreparation]:
        """While the prompt of `request` is built: its messages with markers (`.request`), and
        this object's `tokenize` reading them. Synchronous use only (the prompt is built without
        awaiting), so no other request's prompt interleaves. Raises MediaRefused."""
        refused = self.refusal(request)
        if refused is not None:
            raise refused
        marked, media = self.markers.mark(request)
        preparation = MediaPreparation(marked, media, self)
        self._active = preparation if media else None
        try:
            yield preparation
        finally:
            self._active = None
            preparation.close()

    def close(self) -> None:
        if self.projector is not None:
            self.projector.close()


def _plural(kind: MediaKind) -> str:
    return "images" if kind is MediaKind.IMAGE else "audio"


def load_projector(
    path: Path,
    model: llama_cpp.llama_model_p,
    *,
    markers: MediaMarkers,
    n_threads: int,
    use_gpu: bool,
    bounds: MediaTokenBounds,
) -> Projector:
    return Projector(
        path,
        model,
        marker=markers.projector_marker,
        n_threads=n_threads,
        use_gpu=use_gpu,
        image_max_tokens=bounds.per_image,
    )
