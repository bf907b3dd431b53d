"""`POST /v1/completions`: the legacy text completions over the chat pipeline — what the worker
is sent, the `text_completion` shape as the official `openai` SDK reads it (JSON and stream),
and every refusal a 400 naming its parameter."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from regio.inference.v1 import inference_pb2
from tests.unit.gateway.fake_gateway import API_KEY, bearer, running_gateway

DELTA = inference_pb2.CHUNK_KIND_DELTA
REASONING_THEN_TEXT = [
    inference_pb2.InferenceChunk(kind=DELTA, reasoning_delta="thinking it over"),
    inference_pb2.InferenceChunk(kind=DELTA, text_delta="Paris"),
    inference_pb2.InferenceChunk(kind=DELTA, text_delta=" it is."),
    inference_pb2.InferenceChunk(
        kind=inference_pb2.CHUNK_KIND_FINAL,
        finish_reason=inference_pb2.FINISH_REASON_LENGTH,
        usage=inference_pb2.Usage(prompt_tokens=9, completion_tokens=4),
    ),
]


async def test_the_prompt_is_one_user_message_and_parameters_pass_on() -> None:
    async with running_gateway() as gateway:
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=API_KEY)
        completion = await client.completions.create(
            model="liv",
            prompt="The capital of France is",
            max_tokens=12,
            temperature=0.5,
            stop=["\n"],
            seed=7,
        )
        await client.close()
    sent = gateway.dispatcher.requests[0]
    assert [(m.role, m.content) for m in sent.messages] == [("user", "The capital of France is")]
    assert sent.sampling.max_tokens == 12
    assert sent.sampling.temperature == pytest.approx(0.5)
    assert list(sent.sampling.stop) == ["\n"]
    assert sent.sampling.seed == 7
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-txn-")
    assert completion.choices[0].text == "Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 3


async def test_a_list_holding_one_prompt_is_served() -> None:
    async with running_gateway() as gateway:
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=API_KEY)
        completion = await client.completions.create(model="liv", prompt=["Say hi"])
        await client.close()
    assert completion.choices[0].text == "Hello there"
    assert gateway.dispatcher.requests[0].messages[0].content == "Say hi"


async def test_the_stream_has_text_chunks_a_finish_and_usage() -> None:
    async with running_gateway() as gateway:
        gateway.dispatcher.script = REASONING_THEN_TEXT
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=API_KEY)
        stream = await client.completions.create(
            model="liv",
            prompt="Capital of France?",
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
    # No empty role chunk and no reasoning: only the text, then the finish, then the usage.
    assert [c.choices[0].text for c in chunks if c.choices] == ["Paris", " it is.", ""]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.object == "text_completion" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_the_json_answer_leaves_reasoning_out() -> None:
    async with running_gateway() as gateway:
        gateway.dispatcher.script = REASONING_THEN_TEXT
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gateway.url + "/v1/completions",
                json={"model": "liv", "prompt": "Capital of France?"},
                headers=bearer(),
            ) as response,
        ):
            answer = await response.json()
    assert response.status == 200
    assert answer["choices"] == [
        {"text": "Paris it is.", "index": 0, "logprobs": None, "finish_reason": "length"}
    ]
    assert "thinking_rescued" not in answer


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 2}, "logprobs"),
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 5}, "temperature"),
    ],
)
async def test_what_is_not_served_is_a_400_naming_it(extra: dict[str, Any], param: str) -> None:
    body = {"model": "liv", "prompt": "Hi", **extra}
    async with running_gateway() as gateway:
        async with (
            aiohttp.ClientSession() as session,
            session.post(gateway.url + "/v1/completions", json=body, headers=bearer()) as response,
        ):
            envelope = await response.json()
        assert gateway.billing.reserves == []
    assert response.status == 400
    assert envelope["error"]["param"] == param
    assert envelope["error"]["type"] == "invalid_request_error"


async def test_a_missing_prompt_and_an_unknown_model_answer_like_chat() -> None:
    async with running_gateway() as gateway, aiohttp.ClientSession() as session:
        async with session.post(
            gateway.url + "/v1/completions", json={"model": "liv"}, headers=bearer()
        ) as missing:
            assert missing.status == 400
            assert (await missing.json())["error"]["param"] == "prompt"
        async with session.post(
            gateway.url + "/v1/completions",
            json={"model": "nope", "prompt": "Hi"},
            headers=bearer(),
        ) as unknown:
            assert unknown.status == 404
            assert (await unknown.json())["error"]["code"] == "model_not_found"
