"""Images, PDFs and audio through the real gateway app (fake billing and worker dispatch): gated
by the route's capabilities before anything is held, converted, and sent to the worker in each
message's `media` with their place in the text; the hold counts them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Capabilities
from regio_gateway.protocol.chat_completion import ChatCompletionRequest
from tests.unit.gateway import media_samples as samples
from tests.unit.gateway.fake_gateway import (
    FakeDispatcher,
    FakeWorkerStream,
    RunningGateway,
    bearer,
    running_gateway,
)

IMAGE = inference_pb2.MediaPart.KIND_IMAGE
AUDIO = inference_pb2.MediaPart.KIND_AUDIO


@dataclass
class RecordingDispatcher:
    """The fake dispatcher, keeping every InferenceRequest it was given."""

    inner: FakeDispatcher
    requests: list[inference_pb2.InferenceRequest] = field(default_factory=list)

    async def open(
        self, request: inference_pb2.InferenceRequest, countries: list[str]
    ) -> FakeWorkerStream:
        self.requests.append(request)
        return await self.inner.open(request, countries)


@asynccontextmanager
async def gateway_with(
    capabilities: Capabilities, **settings: Any
) -> AsyncIterator[tuple[RunningGateway, RecordingDispatcher]]:
    async with running_gateway(**settings) as gateway:
        route = gateway.state.catalogue.routes["liv"]
        gateway.state.catalogue.routes["liv"] = route.model_copy(
            update={"capabilities": capabilities, "tokens_per_image": 300}
        )
        recorder = RecordingDispatcher(gateway.dispatcher)
        gateway.state.dispatcher = recorder  # type: ignore[assignment]
        yield gateway, recorder


VISION = Capabilities(vision=True)
VISION_AND_AUDIO = Capabilities(vision=True, audio=True)


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "high"}}


def audio(data: bytes, audio_format: str = "wav") -> dict[str, Any]:
    clip = {"data": samples.b64(data), "format": audio_format}
    return {"type": "input_audio", "input_audio": clip}


def pdf_file(data: bytes) -> dict[str, Any]:
    url = samples.data_url(data, "application/pdf")
    return {"type": "file", "file": {"file_data": url, "filename": "invoice.pdf"}}


async def post(gateway: RunningGateway, *messages: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = {"model": "liv", "messages": list(messages), "max_tokens": 10}
    async with (
        aiohttp.ClientSession(gateway.url) as http,
        http.post("/v1/chat/completions", json=body, headers=bearer()) as response,
    ):
        return response.status, await response.json()


def text_bound(*messages: dict[str, Any]) -> int:
    body = ChatCompletionRequest.parse({"model": "liv", "messages": list(messages)})
    return body.prompt_token_bound()


async def test_an_image_and_its_place_in_the_text_reach_the_worker() -> None:
    picture = samples.png(64, 48)
    message = user(text("Describe "), image(samples.data_url(picture, "image/png")), text("it."))
    async with gateway_with(VISION) as (gateway, recorder):
        status, answer = await post(gateway, message)
    assert status == 200, answer
    (sent,) = recorder.requests
    (to_worker,) = sent.messages
    assert to_worker.content == "Describe it."
    assert [(m.kind, m.mime_type, m.data, m.text_offset) for m in to_worker.media] == [
        (IMAGE, "image/png", picture, len("Describe "))
    ]
    # The hold covers the route's bound per image on top of the text.
    (reserve,) = gateway.billing.reserves
    assert reserve.max_prompt_tokens == text_bound(message) + 300


async def test_a_pdf_becomes_page_images_and_audio_travels_as_sent() -> None:
    clip = samples.wav()
    message = user(pdf_file(samples.pdf(pages=2)), text("Summarise, then "), audio(clip))
    async with gateway_with(VISION_AND_AUDIO) as (gateway, recorder):
        status, answer = await post(gateway, message)
    assert status == 200, answer
    (to_worker,) = recorder.requests[0].messages
    kinds = [(m.kind, m.mime_type, m.text_offset) for m in to_worker.media]
    assert kinds == [
        (IMAGE, "image/png", 0),
        (IMAGE, "image/png", 0),
        (AUDIO, "audio/wav", len("Summarise, then ")),
    ]
    assert all(m.data.startswith(b"\x89PNG") for m in to_worker.media[:2])
    assert to_worker.media[2].data == clip
    (reserve,) = gateway.billing.reserves
    liv = gateway.state.catalogue.routes["liv"]
    assert reserve.max_prompt_tokens == text_bound(message) + 2 * 300 + liv.tokens_per_audio_clip


async def test_media_on_a_route_without_the_capability_is_refused_before_any_hold() -> None:
    cases = [
        (Capabilities(), image(samples.data_url(samples.png(), "image/png")), "vision"),
        (Capabilities(), pdf_file(samples.pdf(1)), "vision"),
        (VISION, audio(samples.wav()), "audio"),
    ]
    for capabilities, part, capability in cases:
        async with gateway_with(capabilities) as (gateway, recorder):
            status, answer = await post(gateway, user(text("Look: "), part))
        assert status == 400
        error = answer["error"]
        assert error["code"] == "unsupported_content"
        assert error["param"] == "messages[0].content[1]"
        assert f"'{capability}'" in error["message"] and "'liv'" in error["message"]
        assert gateway.billing.reserves == [] and recorder.requests == []


async def test_a_bad_part_is_a_400_naming_it_and_holds_nothing() -> None:
    good = image(samples.data_url(samples.png(), "image/png"))
    cases = [
        (user(good, image("data:image/png;base64,%%%")), "messages[0].content[1]", "base64"),
        (user(pdf_file(samples.encrypted_pdf())), "messages[0].content[0]", "encrypted"),
        (user(good, audio(samples.png())), "messages[0].content[1]", "not a WAV or MP3"),
        (
            user(text("x"), {"type": "file", "file": {"file_id": "file-abc"}}),
            "messages[0].content[1].file.file_data",
            "file_id",
        ),
    ]
    for message, param, words in cases:
        async with gateway_with(VISION_AND_AUDIO) as (gateway, recorder):
            status, answer = await post(gateway, message)
        assert status == 400, answer
        assert answer["error"]["param"] == param
        assert words in answer["error"]["message"]
        assert gateway.billing.reserves == [] and recorder.requests == []


async def test_media_only_in_user_messages() -> None:
    part = image(samples.data_url(samples.png(), "image/png"))
    async with gateway_with(VISION) as (gateway, _):
        status, answer = await post(
            gateway, {"role": "system", "content": [part]}, {"role": "user", "content": "Hi"}
        )
    assert status == 400
    assert answer["error"]["param"] == "messages[0].content[0]"
    assert "'system' message" in answer["error"]["message"]


async def test_unknown_part_types_are_refused_naming_the_part() -> None:
    async with gateway_with(VISION) as (gateway, _):
        status, answer = await post(gateway, user(text("a"), {"type": "video_url", "x": 1}))
    assert status == 400
    assert answer["error"]["param"] == "messages[0].content[1]"
    assert "'video_url'" in answer["error"]["message"]


async def test_media_limits_of_a_request() -> None:
    picture = image(samples.data_url(samples.png(), "image/png"))
    async with gateway_with(VISION, media_max_images=2) as (gateway, _):
        status, answer = await post(gateway, user(picture, picture, picture))
        assert (status, answer["error"]["param"]) == (400, "messages")
        assert "at most 2" in answer["error"]["message"]
        # PDF pages count as images.
        status, answer = await post(gateway, user(picture, pdf_file(samples.pdf(2))))
        assert (status, answer["error"]["param"]) == (400, "messages")
        assert "with the PDFs' pages" in answer["error"]["message"]
        assert gateway.billing.reserves == []


async def test_urls_that_are_not_public_https_are_refused_without_a_download() -> None:
    cases = [
        ("http://example.com/cat.png", "Only https URLs"),
        ("https://127.0.0.1/cat.png", "non-public address"),
        ("https://[::1]:8443/cat.png", "non-public address"),
        ("https://10.1.2.3/cat.png", "non-public address"),
        ("https://169.254.169.254/latest/meta-data", "non-public address"),
    ]
    async with gateway_with(VISION) as (gateway, recorder):
        for url, words in cases:
            status, answer = await post(gateway, user(image(url)))
            assert status == 400
            assert answer["error"]["code"] == "invalid_image_url"
            assert answer["error"]["param"] == "messages[0].content[0]"
            assert words in answer["error"]["message"]
        assert gateway.billing.reserves == [] and recorder.requests == []


async def test_text_only_requests_carry_no_media() -> None:
    async with gateway_with(Capabilities()) as (gateway, recorder):
        status, _ = await post(gateway, user(text("Hello")))
    assert status == 200
    assert not recorder.requests[0].messages[0].media


async def test_file_data_may_be_plain_base64() -> None:
    part = {"type": "file", "file": {"file_data": samples.b64(samples.pdf(pages=3))}}
    async with gateway_with(VISION) as (gateway, recorder):
        status, answer = await post(gateway, user(part))
    assert status == 200, answer
    (to_worker,) = recorder.requests[0].messages
    assert [m.mime_type for m in to_worker.media] == ["image/png"] * 3
