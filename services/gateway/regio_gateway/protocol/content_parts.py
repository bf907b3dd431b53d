"""Content parts of a chat message, OpenAI's way: text, and (on routes with the capability)
images, PDFs and audio."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


ContentPart = TextContentPart
