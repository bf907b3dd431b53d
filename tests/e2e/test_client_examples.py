"""The client examples at the end of the seed (seeds/000), run as written against the stack.

Changes to the seed's code: the base URL and key are the stack's, the models are the routes this
machine serves (`liv` is the real Gemma 270M; `scripta` a scripted worker for what that model
cannot show: an image description), `max_tokens` is smaller and `temperature=0` is added where the
real model answers (a small CPU model; deterministic answers)."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
from openai import OpenAI

from regio_devstack.stack import DemoAccount, Stack
from tests.e2e.helpers import function_calls
from tests.e2e.media_samples import data_url, png

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get weather for a location",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string", "description": "City name"}},
                "required": ["location"],
            },
        },
    }
]
TOOL_CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return stack.gateway_url + "/v1"


def test_openai_sdk_sync(base_url: str, demo: DemoAccount) -> None:
    client = OpenAI(base_url=base_url, api_key=demo.api_key)
    response = client.chat.completions.create(
        model="liv",
        messages=[{"role": "user", "content": "Summarize this document."}],
        max_tokens=32,
        temperature=0,
    )
    content = response.choices[0].message.content
    assert isinstance(content, str) and content.strip()


def test_openai_sdk_streaming(base_url: str, demo: DemoAccount) -> None:
    client = OpenAI(base_url=base_url, api_key=demo.api_key)
    stream = client.chat.completions.create(
        model="liv",
        messages=[{"role": "user", "content": "Explain quantum computing."}],
        max_tokens=32,
        temperature=0,
        stream=True,
    )
    printed = []
    for chunk in stream:
        content = chunk.choices[0].delta.content
        if content:
            printed.append(content)
    assert len(printed) > 1, "the answer arrives in pieces"
    assert "".join(printed).strip()


def test_openai_sdk_legacy_completions(base_url: str, demo: DemoAccount) -> None:
    client = OpenAI(base_url=base_url, api_key=demo.api_key)
    completion = client.completions.create(
        model="liv", prompt="Write one sentence about Berlin.", max_tokens=16, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].text.strip()
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    stream = client.completions.create(
        model="liv",
        prompt="Write one sentence about Berlin.",
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    pieces = [chunk.choices[0].text for chunk in stream if chunk.choices]
    assert len(pieces) > 1, "the answer arrives in pieces"
    assert "".join(pieces).strip()


def test_openai_sdk_json_mode(base_url: str, demo: DemoAccount) -> None:
    client = OpenAI(base_url=base_url, api_key=demo.api_key)
    # The seed asks for "the 3 largest EU countries as JSON with name and population": the
    # 270M base model then writes one endless number until max_tokens cuts it (invalid JSON,
    # not charged: tests/e2e/test_json_mode.py). A question it can answer shows the example.
    response = client.chat.completions.create(
        model="liv",
        messages=[
            {
                "role": "user",
                "content": 'Reply with a JSON object with the key "answer" and the value "yes".',
            }
        ],
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_object"},
    )
    data = json.loads(response.choices[0].message.content or "")
    assert isinstance(data, dict)


def test_openai_sdk_vision_with_a_base64_image(base_url: str, demo: DemoAccount) -> None:
    # The seed's example fetches https://example.com/invoice.png; the stack has no internet,
    # so the image travels as the seed's other form, a base64 data URL. The scripted worker
    # names what reached it: the image, decoded by the gateway, with its size.
    client = OpenAI(base_url=base_url, api_key=demo.api_key)
    response = client.chat.completions.create(
        model="scripta",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url("image/png", png(64, 32))}},
                    {"type": "text", "text": "Extract all line items from this invoice as JSON."},
                ],
            }
        ],
        max_tokens=2048,
    )
    content = response.choices[0].message.content or ""
    assert content.startswith("[media: image/png 64x32]")


def test_openai_sdk_tools_auto(base_url: str, demo: DemoAccount) -> None:
    client = OpenAI(base_url=base_url, api_key=demo.api_key)
    response = client.chat.completions.create(
        model="scripta",
        messages=[{"role": "user", "content": "What's the weather in Berlin?"}],
        tools=TOOLS,
        tool_choice="auto",
        max_tokens=512,
    )
    tool_calls = function_calls(response.choices[0].message)
    assert tool_calls
    call = tool_calls[0]
    assert call.type == "function" and TOOL_CALL_ID.match(call.id)
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["location"], str)
    assert response.choices[0].finish_reason == "tool_calls"


def test_openai_sdk_tools_required_on_the_real_model(base_url: str, demo: DemoAccount) -> None:
    client = OpenAI(base_url=base_url, api_key=demo.api_key)
    response = client.chat.completions.create(
        model="liv",
        messages=[{"role": "user", "content": "What's the weather in Berlin?"}],
        tools=TOOLS,
        tool_choice="required",
        max_tokens=64,
        temperature=0,
    )
    tool_calls = function_calls(response.choices[0].message)
    assert tool_calls, response.choices[0].message.content
    assert tool_calls[0].function.name == "get_weather"
    assert isinstance(json.loads(tool_calls[0].function.arguments)["location"], str)
    assert response.choices[0].finish_reason == "tool_calls"


def test_langchain_chat_openai(base_url: str, demo: DemoAccount) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=base_url,
        api_key=demo.api_key,  # type: ignore[arg-type]  # a str is what the seed passes
        model="liv",
        max_tokens=32,  # type: ignore[call-arg]  # an alias of max_completion_tokens
        temperature=0,
    )
    response = llm.invoke("Extract all dates from the following text: ...")
    assert isinstance(response.content, str) and response.content.strip()


def test_llamaindex_openai_like(base_url: str, demo: DemoAccount) -> None:
    from llama_index.llms.openai_like import OpenAILike  # type: ignore[import-untyped]

    llm = OpenAILike(
        api_base=base_url,
        api_key=demo.api_key,
        model="liv",
        max_tokens=32,
        temperature=0,
    )
    response = llm.complete("Explain the EU AI Act in simple terms.")
    assert response.text.strip()


def test_llamaindex_openai_like_as_a_chat_model(base_url: str, demo: DemoAccount) -> None:
    from llama_index.llms.openai_like import OpenAILike  # type: ignore[import-untyped]

    llm = OpenAILike(
        api_base=base_url,
        api_key=demo.api_key,
        model="liv",
        max_tokens=32,
        temperature=0,
        is_chat_model=True,
    )
    response = llm.complete("Explain the EU AI Act in simple terms.")
    assert response.text.strip()


def test_curl(base_url: str, demo: DemoAccount) -> None:
    body = {
        "model": "liv",
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--write-out",
            "\n%{http_code}",
            f"{base_url}/chat/completions",
            "-H",
            f"Authorization: Bearer {demo.api_key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer, status = result.stdout.rsplit("\n", 1)
    assert status == "200"
    completion = json.loads(answer)
    assert completion["object"] == "chat.completion" and completion["model"] == "liv"
    assert completion["choices"][0]["message"]["content"].strip()


def test_curl_to_a_regional_endpoint(stack: Stack, demo: DemoAccount) -> None:
    # Locally the region comes from the Host header, as de.<domain> in production.
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--include",
            f"{stack.gateway_url}/v1/chat/completions",
            "-H",
            "Host: de.localhost",
            "-H",
            f"Authorization: Bearer {demo.api_key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"model": "scripta", "messages": [{"role": "user", "content": "Hi"}]}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # text=True reads curl's CRLF line ends as "\n".
    head, _, answer = result.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    assert "x-regio-country: de" in head.lower()
    assert json.loads(answer)["choices"][0]["message"]["content"]
