"""Content parts of a chat message, OpenAI's way: text, and (on routes with the capability)
images, PDFs and audio. The media parts are checked, downloaded and converted by
`regio_gateway.media`; here they are only their wire shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator


class TextContentPart(BaseModel):
    # Fields a part does not define are ignored (e.g. `cache_control`, sent by clients written
    # for other providers), as at the request's top level; the `type` tells the parts apart.
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # An https URL, or a data URL of an image or a PDF (data:image/png;base64,...).
    url: str = Field(min_length=1)
    # OpenAI's resolution hint; accepted and ignored: the route's projector decides.
    detail: Literal["auto", "low", "high"] | None = None


class ImageUrlContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url"]
    image_url: ImageUrl

    @field_validator("image_url", mode="before")
    @classmethod
    def _bare_url(cls, value: object) -> object:
        # Some clients send the URL itself instead of {"url": ...}.
        return {"url": value} if isinstance(value, str) else value


class FileData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # A data URL of a PDF (data:application/pdf;base64,...), its plain base64, or an https URL.
    file_data: str | None = Field(None, min_length=1)
    file_id: str | None = None  # uploaded files do not exist here: refused with a 400
    filename: str | None = None  # accepted; never logged


class FileContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["file"]
    file: FileData


class InputAudio(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: str = Field(min_length=1)  # base64 of the file
    format: Literal["wav", "mp3"]


class InputAudioContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["input_audio"]
    input_audio: InputAudio


MediaContentPart = ImageUrlContentPart | FileContentPart | InputAudioContentPart
ContentPart = Annotated[TextContentPart | MediaContentPart, Field(discriminator="type")]


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list[ContentPart]"
    return None


# A message's content: a string or an array of parts. Told apart by a discriminator, so that a
# bad part is reported at its index (`messages[0].content[1]`) instead of as "not a string".
MessageContent = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[ContentPart], Tag("list[ContentPart]")],
    Discriminator(
        _content_kind,
        custom_error_type="invalid_content",
        custom_error_message="content must be a string or an array of content parts",
    ),
]


def joined_text(parts: Sequence[TextContentPart | MediaContentPart]) -> str:
    """The text parts of a message, in order: the message's text for the model."""
    return "".join(part.text for part in parts if isinstance(part, TextContentPart))


def text_offsets(parts: Sequence[TextContentPart | MediaContentPart]) -> list[int]:
    """For each part, the characters of `joined_text(parts)` that come before it: where a media
    part sits in the message's text."""
    offsets: list[int] = []
    position = 0
    for part in parts:
        offsets.append(position)
        if isinstance(part, TextContentPart):
            position += len(part.text)
    return offsets
