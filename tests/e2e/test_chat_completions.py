"""An OpenAI client gets real answers from the real model through the whole platform."""

from __future__ import annotations

import openai

from regio_devstack.stack import Stack


def test_non_streaming_completion_with_the_real_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="liv",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=12,
        temperature=0,
    )
    completion = raw.parse()
    assert raw.headers["x-transaction-id"].startswith("txn-")
    assert raw.headers["x-regio-country"] == "de"
    assert completion.object == "chat.completion"
    assert completion.model == "liv"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert 0 < completion.usage.completion_tokens <= 12
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_max_tokens_limits_the_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="liv",
        messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
        max_tokens=3,
        temperature=0,
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"


def test_streaming_completion_ends_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="liv",
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    usage = None
    ids = set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert len(ids) == 1
    assert "".join(pieces).strip()
    assert finish_reasons in (["stop"], ["length"])
    assert usage is not None and 0 < usage.completion_tokens <= 16


def test_streaming_raw_sse_ends_with_done(stack: Stack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="liv", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-transaction-id"].startswith("txn-")
    body = raw.http_response.read().decode()
    events = [line for line in body.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"


def test_models_lists_the_activated_routes_of_the_region(client: openai.OpenAI) -> None:
    models = client.models.list()
    # The demo account has every route of the e2e catalogue activated in eu, sorted by id.
    assert [model.id for model in models.data] == ["liv", "liv-think", "scripta"]
    liv = models.data[0].model_dump()
    assert liv["object"] == "model"
    assert liv["base_models"] == ["google/gemma-3-270m"]
    assert liv["context_length"] == 8192
    assert liv["max_tokens"] == 2048
    assert liv["capabilities"] == {
        "thinking": False,
        "tools": True,
        "vision": False,
        "audio": False,
        "json_mode": True,
        "token_budget": False,
    }
    assert "temperature" in liv["supported_parameters"]
