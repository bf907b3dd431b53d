"""Media bytes to what the worker receives: data URLs and base64, types told by their bytes,
images passed on or converted, PDFs rendered page by page, audio checked, limits refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from regio_gateway.media.conversion import MediaConverter, MediaKind
from regio_gateway.media.problems import MediaProblem
from regio_gateway.media.settings import MediaSettings
from tests.unit.gateway import media_samples as samples


def converter(**limits: int) -> MediaConverter:
    return MediaConverter(MediaSettings.model_validate(limits))


def pixels(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_png_and_jpeg_data_urls_reach_the_worker_as_sent() -> None:
    for data, mime_type in ((samples.png(), "image/png"), (samples.jpeg(), "image/jpeg")):
        (image,) = converter().visual_data_url(samples.data_url(data, mime_type))
        assert (image.kind, image.mime_type, image.data) == (MediaKind.IMAGE, mime_type, data)


def test_webp_and_gif_become_png_of_the_same_size() -> None:
    for data, mime_type, size in (
        (samples.webp(32, 16), "image/webp", (32, 16)),
        (samples.gif(20, 10), "image/gif", (20, 10)),
    ):
        (image,) = converter().visual_data_url(samples.data_url(data, mime_type))
        assert image.mime_type == "image/png"
        assert image.data.startswith(b"\x89PNG")
        assert pixels(image.data) == size


def test_the_bytes_decide_the_type_not_the_label() -> None:
    # A JPEG labelled PNG (common in the wild) is read as the JPEG it is.
    (image,) = converter().visual_data_url(samples.data_url(samples.jpeg(), "image/png"))
    assert image.mime_type == "image/jpeg"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("data:image/png;base64,@@@not-base64@@@", "not valid base64"),
        ("data:image/png,rawbytes", "must be base64"),
        ("data:image/png;base64,", "empty"),
        ("data:nonsense", "malformed"),
        (samples.data_url(b"hello, world", "image/png"), "not a PNG, JPEG, WebP or GIF"),
        (samples.data_url(samples.png(), "text/html"), "Expected an image or a PDF"),
        (samples.data_url(samples.wav(), "image/png"), "it is WAV"),
        (samples.data_url(samples.png()[:40], "image/png"), "damaged"),
    ],
)
def test_unusable_image_data_is_refused_with_a_reason(url: str, words: str) -> None:
    with pytest.raises(MediaProblem) as refused:
        converter().visual_data_url(url)
    assert words in refused.value.message


def test_base64_with_line_breaks_is_accepted() -> None:
    encoded = samples.b64(samples.png())
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    (image,) = converter().visual_data_url(f"data:image/png;base64,{wrapped}")
    assert image.data == samples.png()


def test_an_item_over_the_byte_limit_is_refused_before_decoding() -> None:
    big = samples.data_url(b"\x89PNG\r\n\x1a\n" + b"\x00" * 4000, "image/png")
    with pytest.raises(MediaProblem, match="larger than 2048 bytes"):
        converter(media_max_item_bytes=2048).visual_data_url(big)


def test_an_image_with_too_many_pixels_is_refused() -> None:
    with pytest.raises(MediaProblem, match="200x100 pixels"):
        converter(media_max_image_pixels=10_000).visual(samples.png(200, 100), "image/png")


def test_a_pdf_becomes_one_png_per_page_within_the_size_limit() -> None:
    pages = converter(media_pdf_max_side_pixels=1000).visual(samples.pdf(pages=3), "")
    assert [page.mime_type for page in pages] == ["image/png"] * 3
    assert all(page.pdf_page and page.kind is MediaKind.IMAGE for page in pages)
    # Letter size, longest side scaled to 1000 px.
    assert [pixels(page.data) for page in pages] == [(773, 1000)] * 3


def test_a_pdf_in_an_image_url_data_url_is_rendered_too() -> None:
    pages = converter().visual_data_url(samples.data_url(samples.pdf(2), "application/pdf"))
    assert len(pages) == 2
    # Small pages are rendered at 200 dpi, not blown up to the side limit.
    assert pixels(pages[0].data) == (1187, 1536)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (samples.pdf(pages=5), "has 5 pages; at most 4"),
        (samples.encrypted_pdf(), "encrypted"),
        (b"%PDF-1.7\n% this is no PDF at all\n", "damaged or not a PDF"),
    ],
)
def test_unusable_pdfs_are_refused_with_a_reason(data: bytes, words: str) -> None:
    with pytest.raises(MediaProblem) as refused:
        converter(media_max_pdf_pages=4).visual(data, "application/pdf")
    assert words in refused.value.message


def test_wav_and_mp3_audio_pass_with_their_types() -> None:
    clip = converter().audio(samples.b64(samples.wav()), "wav")
    assert (clip.kind, clip.mime_type, clip.data) == (MediaKind.AUDIO, "audio/wav", samples.wav())
    assert converter().audio(samples.b64(samples.mp3()), "mp3").mime_type == "audio/mpeg"
    # Some clients send a data URL where base64 is expected.
    as_url = samples.data_url(samples.wav(), "audio/wav")
    assert converter().audio(as_url, "wav").data == samples.wav()


def test_audio_that_is_no_audio_is_refused() -> None:
    with pytest.raises(MediaProblem, match="not a WAV or MP3 file"):
        converter().audio(samples.b64(samples.png()), "wav")
    with pytest.raises(MediaProblem, match="not valid base64"):
        converter().audio("%%%", "mp3")
