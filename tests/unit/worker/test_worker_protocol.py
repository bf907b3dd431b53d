"""Protobuf to engine values and back: sampling options, chunks, billing flag, usage records."""

from __future__ import annotations

import pytest

from regio.inference.v1 import inference_pb2
from regio_worker.engine.base import ChatMessage, FinishReason, GenerationFinished, Usage
from regio_worker.protocol import (
    WorkerIdentity,
    final_chunk,
    generation_request,
    is_billable,
    usage_record,
)

IDENTITY = WorkerIdentity(worker_id="de-liv-1", country="de", route="liv")


def test_generation_request_keeps_set_options_and_leaves_unset_ones_to_the_engine() -> None:
    request = inference_pb2.InferenceRequest(
        transaction_id="txn-1",
        messages=[inference_pb2.ChatMessage(role="user", content="hi")],
        sampling=inference_pb2.SamplingParams(
            max_tokens=12, temperature=0.0, stop=["\n"], seed=-7, frequency_penalty=0.5
        ),
        free_system_prompt="free",
    )
    generation = generation_request(request)
    assert generation.messages == (ChatMessage("user", "hi"),)
    assert generation.max_tokens == 12
    assert generation.temperature == 0.0  # set to zero is not unset
    assert generation.top_p is None
    assert generation.stop == ("\n",)
    assert generation.seed == -7
    assert generation.presence_penalty is None
    assert generation.frequency_penalty == 0.5
    assert generation.free_system_prompt == "free"


def test_max_tokens_zero_means_unset() -> None:
    request = inference_pb2.InferenceRequest(transaction_id="t")
    assert generation_request(request).max_tokens is None


@pytest.mark.parametrize(
    ("finish", "completion_tokens", "billable"),
    [
        (FinishReason.STOP, 3, True),
        (FinishReason.LENGTH, 5, True),
        (FinishReason.CANCELLED, 2, True),
        (FinishReason.ERROR, 1, True),
        (FinishReason.CANCELLED, 0, False),
        (FinishReason.ERROR, 0, False),
    ],
)
def test_billable_unless_it_ended_early_before_any_token(
    finish: FinishReason, completion_tokens: int, billable: bool
) -> None:
    finished = GenerationFinished(
        finish, Usage(prompt_tokens=9, completion_tokens=completion_tokens)
    )
    assert is_billable(finished) is billable


def test_final_chunk_carries_finish_reason_usage_and_error() -> None:
    finished = GenerationFinished(
        FinishReason.ERROR, Usage(4, 0, 2, 1), error_message="prompt too long"
    )
    chunk = final_chunk("txn-1", 7, finished)
    assert chunk.kind == inference_pb2.CHUNK_KIND_FINAL
    assert chunk.sequence == 7
    assert chunk.finish_reason == inference_pb2.FINISH_REASON_ERROR
    assert (chunk.usage.prompt_tokens, chunk.usage.free_prompt_tokens) == (4, 2)
    assert chunk.usage.cached_tokens == 1
    assert chunk.error_message == "prompt too long"


def test_usage_record_names_request_worker_and_counts() -> None:
    request = inference_pb2.InferenceRequest(
        transaction_id="txn-9", account_id="acct-1", route="liv", region="eu"
    )
    finished = GenerationFinished(FinishReason.LENGTH, Usage(10, 5, 3, 0))
    record = usage_record(request, IDENTITY, finished, finished_unix_ms=1234)
    assert (record.transaction_id, record.account_id, record.route) == ("txn-9", "acct-1", "liv")
    assert (record.region, record.country, record.worker_id) == ("eu", "de", "de-liv-1")
    assert (record.prompt_tokens, record.completion_tokens, record.free_prompt_tokens) == (10, 5, 3)
    assert record.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert record.billable
    assert record.finished_unix_ms == 1234
