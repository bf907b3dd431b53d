"""Bytes of one media part to what the worker receives; blocking and CPU-bound (base64, image
headers, PDF rendering): the loader runs these in worker threads."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from regio_gateway.media.data_url import decode_base64, decode_data_url, is_data_url
from regio_gateway.media.images import worker_image
from regio_gateway.media.pdf import PdfRasterizer
from regio_gateway.media.problems import MediaProblem
from regio_gateway.media.settings import MediaSettings
from regio_gateway.media.sniff import AUDIO_TYPES, IMAGE_TYPES, PDF, describe, sniff

# What a client may declare (data URL type, server Content-Type) for an image or a PDF: the
# bytes decide which of the accepted types it is, a declared text or audio type is a mistake.
NEUTRAL_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


class MediaKind(StrEnum):
    IMAGE = "image"
    AUDIO = "audio"


@dataclass(frozen=True)
class WorkerMedia:
    kind: MediaKind
    mime_type: str
    data: bytes
    pdf_page: bool = False


class MediaConverter:
    def __init__(self, settings: MediaSettings) -> None:
        self._max_item_bytes = settings.media_max_item_bytes
        self._max_pixels = settings.media_max_image_pixels
        self._pdfs = PdfRasterizer(
            max_pages=settings.media_max_pdf_pages,
            max_side_pixels=settings.media_pdf_max_side_pixels,
        )

    @property
    def max_item_bytes(self) -> int:
        return self._max_item_bytes

    def visual_data_url(self, url: str) -> list[WorkerMedia]:
        """An image or a PDF (one image per page) from a data URL."""
        decoded = decode_data_url(url, self._max_item_bytes)
        return self.visual(decoded.data, decoded.mime_type)

    def visual_base64(self, payload: str) -> list[WorkerMedia]:
        return self.visual(decode_base64(payload, self._max_item_bytes), "")

    def visual(self, data: bytes, declared_type: str) -> list[WorkerMedia]:
        """An image or a PDF from its bytes; `declared_type` is what the client or the web
        server said it is."""
        if not (
            declared_type in NEUTRAL_TYPES
            or declared_type.startswith("image/")
            or declared_type == PDF
        ):
            raise MediaProblem(f"Expected an image or a PDF, got {declared_type}.")
        detected = sniff(data)
        if detected == PDF:
            return [
                WorkerMedia(MediaKind.IMAGE, "image/png", page, pdf_page=True)
                for page in self._pdfs.pages_as_png(data)
            ]
        if detected not in IMAGE_TYPES:
            raise MediaProblem(
                "The data is not a PNG, JPEG, WebP or GIF image or a PDF"
                + (f" (it is {describe(detected)})." if detected else ".")
            )
        mime_type, image = worker_image(data, detected, self._max_pixels)
        return [WorkerMedia(MediaKind.IMAGE, mime_type, image)]

    def audio(self, payload: str, audio_format: str) -> WorkerMedia:
        """An `input_audio` part: base64 of a WAV or MP3 file; the bytes decide which."""
        if is_data_url(payload):  # some clients send data:audio/wav;base64,...
            data = decode_data_url(payload, self._max_item_bytes).data
        else:
            data = decode_base64(payload, self._max_item_bytes)
        detected = sniff(data)
        if detected not in AUDIO_TYPES:
            raise MediaProblem(
                f"The audio data is not a WAV or MP3 file (format '{audio_format}' was named)."
            )
        return WorkerMedia(MediaKind.AUDIO, detected, data)
