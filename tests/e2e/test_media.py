"""Images, PDFs and audio through the stack: the gateway decodes and converts them (a PDF
becomes one image per page), the worker receives them as bytes, and routes without the
capability refuse them before anything is held.

The scripted worker behind `scripta` starts its answer with what reached it, e.g.
`[media: image/png 64x32, audio/wav 1.0s]`: that is how these tests see the conversion."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import openai
import pytest

from regio_devstack.stack import Stack
from tests.e2e.conftest import Customer
from tests.e2e.helpers import settled_balance
from tests.e2e.media_samples import (
    audio_part,
    data_url,
    image_part,
    pdf,
    pdf_file_part,
    png,
    text_part,
    wav,
)

SCRIPTA_PRICE_NANO = (139, 249)  # per token: €0.139 / €0.249 per 1M tokens
MEDIA = re.compile(r"^\[media: ([^\]]*)\]")


def received(client: openai.OpenAI, *parts: dict[str, Any]) -> list[str]:
    """What the scripted worker says it received, one entry per media part."""
    messages: Any = [{"role": "user", "content": [*parts, text_part("What is this?")]}]
    completion = client.chat.completions.create(
        model="scripta",
        messages=messages,
        reasoning_effort="none",
    )
    content = completion.choices[0].message.content or ""
    described = MEDIA.match(content)
    assert described, content
    return described.group(1).split(", ")


def page_orientation(description: str) -> str:
    width, height = (int(n) for n in description.removeprefix("image/png ").split("x"))
    return "portrait" if height > width else "landscape"


def test_a_png_data_url_reaches_the_worker(client: openai.OpenAI) -> None:
    assert received(client, image_part(data_url("image/png", png(64, 32)))) == ["image/png 64x32"]


def test_a_pdf_becomes_one_image_per_page(client: openai.OpenAI) -> None:
    document = pdf((300, 400), (400, 300))
    as_file = received(client, pdf_file_part(document))
    assert len(as_file) == 2 and all(page.startswith("image/png ") for page in as_file)
    assert [page_orientation(page) for page in as_file] == ["portrait", "landscape"]
    # The seed sends PDFs where images go, too.
    as_image = received(client, image_part(data_url("application/pdf", document)))
    assert as_image == as_file


def test_audio_reaches_the_worker(client: openai.OpenAI) -> None:
    assert received(client, audio_part(wav(1.0))) == ["audio/wav 1.0s"]


def test_parts_keep_their_order(client: openai.OpenAI) -> None:
    parts = received(client, audio_part(wav(0.5)), image_part(data_url("image/png", png(8, 16))))
    assert parts == ["audio/wav 0.5s", "image/png 8x16"]


def bad_request(client: openai.OpenAI, model: str, *parts: dict[str, Any]) -> dict[str, Any]:
    messages: Any = [{"role": "user", "content": [text_part("What is this?"), *parts]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=8,
        )
    body = caught.value.body
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("part", "capability"),
    [
        (image_part(data_url("image/png", png(4, 4))), "vision"),
        (pdf_file_part(pdf((100, 100))), "vision"),
        (audio_part(wav(0.1)), "audio"),
    ],
)
def test_a_route_without_the_capability_refuses_the_part_naming_it(
    client: openai.OpenAI, part: dict[str, Any], capability: str
) -> None:
    body = bad_request(client, "liv", part)
    assert body["code"] == "unsupported_content"
    assert capability in body["message"]
    assert body["param"] == "messages[0].content[1]"


def test_undecodable_media_is_a_400_naming_the_part(client: openai.OpenAI) -> None:
    not_base64 = image_part("data:image/png;base64,***not base64***")
    assert bad_request(client, "scripta", not_base64)["param"] == "messages[0].content[1]"
    not_a_png = image_part(data_url("image/png", b"plain text, not an image"))
    assert bad_request(client, "scripta", not_a_png)["param"] == "messages[0].content[1]"
    not_a_pdf = pdf_file_part(b"%PDF-1.7 but nothing after it")
    assert bad_request(client, "scripta", not_a_pdf)["param"] == "messages[0].content[1]"
    not_audio = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"noise").decode(), "format": "wav"},
    }
    assert bad_request(client, "scripta", not_audio)["param"] == "messages[0].content[1]"


def test_an_image_url_on_a_private_address_is_refused(client: openai.OpenAI) -> None:
    # The gateway fetches https images itself: never from its own network (SSRF).
    body = bad_request(client, "scripta", image_part("https://127.0.0.1/invoice.png"))
    assert body["param"] == "messages[0].content[1]"


def test_a_refused_part_holds_and_charges_nothing(
    stack: Stack, new_customer: Callable[..., Customer]
) -> None:
    customer = new_customer(routes=("liv",))
    before = settled_balance(stack, customer.account_id)
    bad_request(customer.client, "liv", image_part(data_url("image/png", png(4, 4))))
    assert settled_balance(stack, customer.account_id) == before


def test_media_requests_are_billed_exactly(
    stack: Stack, new_customer: Callable[..., Customer]
) -> None:
    customer = new_customer(routes=("scripta",))
    before = settled_balance(stack, customer.account_id)
    parts = [
        text_part("Compare these."),
        image_part(data_url("image/png", png(32, 32))),
        pdf_file_part(pdf((200, 300), (200, 300))),
        audio_part(wav(0.5)),
    ]
    messages: Any = [{"role": "user", "content": parts}]
    completion = customer.client.chat.completions.create(model="scripta", messages=messages)
    assert (completion.choices[0].message.content or "").startswith("[media: ")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0
    after = settled_balance(stack, customer.account_id)
    assert before["balance_nano"] - after["balance_nano"] == (
        usage.prompt_tokens * SCRIPTA_PRICE_NANO[0]
        + usage.completion_tokens * SCRIPTA_PRICE_NANO[1]
    )
