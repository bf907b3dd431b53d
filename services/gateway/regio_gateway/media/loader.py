"""The media of a chat completion request: gated by the route's capabilities before anything is
fetched or decoded, then loaded (downloads concurrently, CPU work in worker threads) into the
MediaPart values the worker receives with each message."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Route
from regio_common.errors import UNSUPPORTED_CONTENT, ClientError, InvalidRequest
from regio_gateway.media.conversion import MediaConverter, MediaKind, WorkerMedia
from regio_gateway.media.data_url import is_data_url
from regio_gateway.media.fetch import MediaFetcher
from regio_gateway.media.problems import MediaProblem
from regio_gateway.media.settings import MediaSettings
from regio_gateway.protocol.chat_completion import ChatCompletionRequest
from regio_gateway.protocol.content_parts import (
    FileContentPart,
    ImageUrlContentPart,
    InputAudioContentPart,
    MediaContentPart,
    TextContentPart,
    text_offsets,
)

log = structlog.get_logger()

PROTO_KINDS = {
    MediaKind.IMAGE: inference_pb2.MediaPart.KIND_IMAGE,
    MediaKind.AUDIO: inference_pb2.MediaPart.KIND_AUDIO,
}


@dataclass(frozen=True)
class MediaRef:
    """A media part and where it is: message index, part index, and its place in the text."""

    message: int
    part: int
    content: MediaContentPart
    text_offset: int

    @property
    def param(self) -> str:
        return f"messages[{self.message}].content[{self.part}]"

    @property
    def is_audio(self) -> bool:
        return isinstance(self.content, InputAudioContentPart)


@dataclass(frozen=True)
class LoadedMedia:
    """What the worker receives: the media parts of each message (by message index)."""

    by_message: dict[int, list[inference_pb2.MediaPart]] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return self._count(inference_pb2.MediaPart.KIND_IMAGE)

    @property
    def audio_clips(self) -> int:
        return self._count(inference_pb2.MediaPart.KIND_AUDIO)

    def token_bound(self, route: Route) -> int:
        """Most prompt tokens the media can become on `route` (the worker refuses an item above
        its route's bound, so the credit hold covers them)."""
        return self.images * route.tokens_per_image + self.audio_clips * route.tokens_per_audio_clip

    def _count(self, kind: inference_pb2.MediaPart.Kind.ValueType) -> int:
        return sum(part.kind == kind for parts in self.by_message.values() for part in parts)


def media_refs(body: ChatCompletionRequest) -> list[MediaRef]:
    refs: list[MediaRef] = []
    for message_index, message in enumerate(body.messages):
        if not isinstance(message.content, list):
            continue
        offsets = text_offsets(message.content)
        for part_index, part in enumerate(message.content):
            if not isinstance(part, TextContentPart):
                refs.append(MediaRef(message_index, part_index, part, offsets[part_index]))
    return refs


class MediaLoader:
    """Gates and loads the media of requests; one per gateway process."""

    def __init__(self, settings: MediaSettings, fetcher: MediaFetcher) -> None:
        self._settings = settings
        self._fetcher = fetcher
        self._converter = MediaConverter(settings)

    def for_request(self, body: ChatCompletionRequest) -> RequestMedia:
        return RequestMedia(self, body, media_refs(body))

    async def close(self) -> None:
        await self._fetcher.close()

    def gate(self, refs: Sequence[MediaRef], body: ChatCompletionRequest, route: Route) -> None:
        """Refuse media the route cannot take, before anything is downloaded or decoded."""
        settings = self._settings
        for ref in refs:
            role = body.messages[ref.message].role
            if role != "user":
                raise InvalidRequest(
                    f"Only user messages may hold image, file or audio parts; this is a "
                    f"'{role}' message.",
                    param=ref.param,
                )
            capability = "audio" if ref.is_audio else "vision"
            if not getattr(route.capabilities, capability):
                what = "audio" if ref.is_audio else "images or PDFs"
                raise InvalidRequest(
                    f"The model '{route.name}' cannot read {what}: it lacks the capability "
                    f"'{capability}'.",
                    param=ref.param,
                    code=UNSUPPORTED_CONTENT,
                )
            if isinstance(ref.content, FileContentPart) and ref.content.file.file_data is None:
                raise InvalidRequest(
                    "Send the file's content in 'file_data' (a data URL or base64 of a PDF); "
                    "uploaded files ('file_id') are not supported.",
                    param=f"{ref.param}.file.file_data",
                )
        audio_clips = sum(ref.is_audio for ref in refs)
        if len(refs) - audio_clips > settings.media_max_images:
            raise InvalidRequest(
                f"Too many images: at most {settings.media_max_images} are accepted in one "
                "request.",
                param="messages",
            )
        if audio_clips > settings.media_max_audio_clips:
            raise InvalidRequest(
                f"Too many audio clips: at most {settings.media_max_audio_clips} are accepted "
                "in one request.",
                param="messages",
            )

    async def load(self, refs: Sequence[MediaRef]) -> LoadedMedia:
        if not refs:
            return LoadedMedia()
        budget = _ByteBudget(self._settings.media_max_request_bytes)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._load_part(ref, budget)) for ref in refs]
        except BaseExceptionGroup as failures:
            # The first refused part in request order; anything else is a failure of ours.
            refused = [error for error in failures.exceptions if isinstance(error, _PartRefused)]
            if len(refused) == len(failures.exceptions):
                raise min(refused, key=lambda error: error.order) from None
            raise
        loaded: dict[int, list[inference_pb2.MediaPart]] = {}
        for ref, task in zip(refs, tasks, strict=True):
            for item in task.result():
                loaded.setdefault(ref.message, []).append(
                    inference_pb2.MediaPart(
                        kind=PROTO_KINDS[item.kind],
                        data=item.data,
                        mime_type=item.mime_type,
                        text_offset=ref.text_offset,
                    )
                )
        media = LoadedMedia(loaded)
        self._check_totals(media)
        log.info(
            "media_loaded",
            parts=len(refs),
            images=media.images,
            audio_clips=media.audio_clips,
            bytes=sum(len(part.data) for parts in loaded.values() for part in parts),
        )
        return media

    def _check_totals(self, media: LoadedMedia) -> None:
        settings = self._settings
        if media.images > settings.media_max_images:
            raise InvalidRequest(
                f"Too many images: the request has {media.images} with the PDFs' pages; at "
                f"most {settings.media_max_images} are accepted.",
                param="messages",
            )
        size = sum(len(part.data) for parts in media.by_message.values() for part in parts)
        if size > settings.media_max_request_bytes:
            raise InvalidRequest(
                f"The request's media (PDF pages rendered as images included) exceed "
                f"{settings.media_max_request_bytes} bytes.",
                param="messages",
            )

    async def _load_part(self, ref: MediaRef, budget: _ByteBudget) -> list[WorkerMedia]:
        try:
            return await self._convert(ref, budget)
        except MediaProblem as problem:
            raise _PartRefused(ref, problem) from None

    async def _convert(self, ref: MediaRef, budget: _ByteBudget) -> list[WorkerMedia]:
        converter = self._converter
        content = ref.content
        if isinstance(content, InputAudioContentPart):
            budget.take_encoded(content.input_audio.data)
            audio = content.input_audio
            return [await asyncio.to_thread(converter.audio, audio.data, audio.format)]
        if isinstance(content, ImageUrlContentPart):
            source = content.image_url.url
        elif isinstance(content, FileContentPart) and content.file.file_data is not None:
            source = content.file.file_data
        else:  # gate() refused it
            raise MediaProblem("The part holds no media.")
        if is_data_url(source):
            budget.take_encoded(source)
            return await asyncio.to_thread(converter.visual_data_url, source)
        if "://" in source[:16] or isinstance(content, ImageUrlContentPart):
            # A URL (the fetcher refuses anything but https).
            fetched = await self._fetcher.fetch(source, converter.max_item_bytes)
            budget.take(len(fetched.data))
            return await asyncio.to_thread(converter.visual, fetched.data, fetched.content_type)
        # file_data may be the file's plain base64.
        budget.take_encoded(source)
        return await asyncio.to_thread(converter.visual_base64, source)


class RequestMedia:
    """The media of one request, loaded at most once for all the candidate models it is tried
    on (`model`, then the `models` fallbacks); gated again for each route."""

    def __init__(self, loader: MediaLoader, body: ChatCompletionRequest, refs: list[MediaRef]):
        self._loader = loader
        self._body = body
        self._refs = refs
        self._loaded: LoadedMedia | None = None
        self._refused: ClientError | None = None

    async def for_route(self, route: Route) -> LoadedMedia:
        """The loaded media, or a 400 when the route cannot take them or a part is bad."""
        if not self._refs:
            return LoadedMedia()
        self._loader.gate(self._refs, self._body, route)
        if self._refused is not None:
            raise self._refused
        if self._loaded is None:
            try:
                self._loaded = await self._loader.load(self._refs)
            except ClientError as error:
                self._refused = error
                raise
        return self._loaded


class _PartRefused(InvalidRequest):
    """A 400 naming the part that cannot be used."""

    def __init__(self, ref: MediaRef, problem: MediaProblem) -> None:
        super().__init__(problem.message, param=ref.param, code=problem.code)
        self.order = (ref.message, ref.part)


class _ByteBudget:
    """The request's media input bytes so far, refused beyond the limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0

    def take(self, size: int) -> None:
        self._used += size
        if self._used > self._limit:
            raise MediaProblem(f"The request's media exceed {self._limit} bytes together.")

    def take_encoded(self, base64_text: str) -> None:
        self.take(len(base64_text) // 4 * 3)
