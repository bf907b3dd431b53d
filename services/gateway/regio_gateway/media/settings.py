"""Limits and fetch behaviour of media in chat messages (env prefix REGIO_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from regio_common.settings import RegioSettings

MIB = 1024 * 1024


class MediaSettings(RegioSettings):
    media_max_item_bytes: int = Field(
        10 * MIB,
        ge=1024,
        description="Largest image, PDF or audio clip, decoded or downloaded; larger: 400 "
        "naming the part.",
    )
    media_max_request_bytes: int = Field(
        16 * MIB,
        ge=1024,
        description="Most media bytes of one request: the decoded or downloaded inputs "
        "together, and the converted media sent to the worker together (PDF pages as PNG); "
        "beyond: 400. Keep it and REGIO_MAX_BODY_BYTES below NATS' max_payload.",
    )
    media_max_images: int = Field(
        16,
        ge=1,
        description="Most images in one request, PDF pages included; more: 400.",
    )
    media_max_pdf_pages: int = Field(
        16, ge=1, description="Most pages of one PDF; a longer PDF: 400 naming the part."
    )
    media_max_audio_clips: int = Field(
        4, ge=1, description="Most audio clips (`input_audio` parts) in one request; more: 400."
    )
    media_max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Most pixels (width x height) of one image; larger: 400 (a small file may "
        "unpack to a huge bitmap).",
    )
    media_pdf_max_side_pixels: int = Field(
        1536,
        ge=64,
        description="Longest side of a PDF page rendered as an image (at most 200 dpi).",
    )
    media_fetch_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time to download one image or PDF URL, redirects included; slower: 400 "
        "`invalid_image_url`.",
    )
    media_fetch_max_redirects: int = Field(
        3, ge=0, description="Redirects followed when downloading a URL (each to https only)."
    )
    media_fetch_allow_private_addresses: bool = Field(
        False,
        description="Allow image URLs that resolve to loopback, private, link-local or other "
        "non-public addresses (off: such URLs are refused, so clients cannot make the gateway "
        "reach internal services). For tests and closed networks only.",
    )
    media_fetch_ca_file: Path | None = Field(
        None,
        description="PEM file of extra certificate authorities trusted when downloading URLs "
        "(besides the system's), e.g. for an internal image server.",
    )
