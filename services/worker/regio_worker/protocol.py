"""Conversions between the NATS protocol (protobuf) and the engine's values."""

from __future__ import annotations

from dataclasses import dataclass

from regio.inference.v1 import inference_pb2
from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    OutputFormat,
    TokenLogprob,
    Usage,
)

OUTPUT_FORMATS: dict[inference_pb2.ResponseFormat.Kind.ValueType, OutputFormat] = {
    inference_pb2.ResponseFormat.KIND_TEXT: OutputFormat.TEXT,
    inference_pb2.ResponseFormat.KIND_JSON_OBJECT: OutputFormat.JSON_OBJECT,
    inference_pb2.ResponseFormat.KIND_JSON_SCHEMA: OutputFormat.JSON_SCHEMA,
}

FINISH_REASON_TO_PROTO: dict[FinishReason, inference_pb2.FinishReason.ValueType] = {
    FinishReason.STOP: inference_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: inference_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: inference_pb2.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: inference_pb2.FINISH_REASON_ERROR,
}


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    country: str
    route: str


def generation_request(request: inference_pb2.InferenceRequest) -> GenerationRequest:
    sampling = request.sampling
    return GenerationRequest(
        transaction_id=request.transaction_id,
        messages=tuple(ChatMessage(m.role, m.content) for m in request.messages),
        free_system_prompt=request.free_system_prompt,
        max_tokens=sampling.max_tokens or None,  # 0: not set
        temperature=sampling.temperature if sampling.HasField("temperature") else None,
        top_p=sampling.top_p if sampling.HasField("top_p") else None,
        stop=tuple(sampling.stop),
        seed=sampling.seed if sampling.HasField("seed") else None,
        presence_penalty=(
            sampling.presence_penalty if sampling.HasField("presence_penalty") else None
        ),
        frequency_penalty=(
            sampling.frequency_penalty if sampling.HasField("frequency_penalty") else None
        ),
        output_format=OUTPUT_FORMATS[request.response_format.kind],
        json_schema=request.response_format.json_schema,
        middle_out=not request.no_middle_out,
        top_logprobs=sampling.top_logprobs if sampling.logprobs else None,
        logit_bias=tuple(sorted(sampling.logit_bias.items())),
    )


def accepted_chunk(transaction_id: str, identity: WorkerIdentity) -> inference_pb2.InferenceChunk:
    return inference_pb2.InferenceChunk(
        transaction_id=transaction_id,
        sequence=0,
        kind=inference_pb2.CHUNK_KIND_ACCEPTED,
        worker_id=identity.worker_id,
        country=identity.country,
    )


def rejected_chunk(
    transaction_id: str, identity: WorkerIdentity, reason: str
) -> inference_pb2.InferenceChunk:
    return inference_pb2.InferenceChunk(
        transaction_id=transaction_id,
        sequence=0,
        kind=inference_pb2.CHUNK_KIND_REJECTED,
        worker_id=identity.worker_id,
        country=identity.country,
        error_message=reason,
    )


def delta_chunk(
    transaction_id: str,
    sequence: int,
    text: str,
    dropped_messages: int = 0,
    logprobs: tuple[TokenLogprob, ...] = (),
) -> inference_pb2.InferenceChunk:
    return inference_pb2.InferenceChunk(
        transaction_id=transaction_id,
        sequence=sequence,
        kind=inference_pb2.CHUNK_KIND_DELTA,
        text_delta=text,
        dropped_messages=dropped_messages,
        logprobs=[logprob_message(entry) for entry in logprobs],
    )


def logprob_message(entry: TokenLogprob) -> inference_pb2.TokenLogprob:
    return inference_pb2.TokenLogprob(
        token=entry.token,
        logprob=entry.logprob,
        top_logprobs=[
            inference_pb2.TopLogprob(token=top.token, logprob=top.logprob)
            for top in entry.top_logprobs
        ],
    )


def final_chunk(
    transaction_id: str, sequence: int, finished: GenerationFinished, dropped_messages: int = 0
) -> inference_pb2.InferenceChunk:
    return inference_pb2.InferenceChunk(
        transaction_id=transaction_id,
        sequence=sequence,
        kind=inference_pb2.CHUNK_KIND_FINAL,
        finish_reason=FINISH_REASON_TO_PROTO[finished.finish_reason],
        usage=usage_message(finished.usage),
        error_message=finished.error_message,
        error_code=finished.error_code,
        dropped_messages=dropped_messages,
    )


def usage_message(usage: Usage) -> inference_pb2.Usage:
    return inference_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        free_prompt_tokens=usage.free_prompt_tokens,
        cached_tokens=usage.cached_tokens,
    )


def is_billable(finished: GenerationFinished) -> bool:
    """Nothing is charged for a request that failed or was cancelled before its first token,
    nor for output that broke its promise (JSON mode output that is not valid JSON)."""
    if finished.unbilled_reason:
        return False
    ended_early = finished.finish_reason in (FinishReason.ERROR, FinishReason.CANCELLED)
    return not (ended_early and finished.usage.completion_tokens == 0)


def usage_record(
    request: inference_pb2.InferenceRequest,
    identity: WorkerIdentity,
    finished: GenerationFinished,
    finished_unix_ms: int,
) -> inference_pb2.UsageRecord:
    return inference_pb2.UsageRecord(
        transaction_id=request.transaction_id,
        account_id=request.account_id,
        route=request.route or identity.route,
        region=request.region,
        country=identity.country,
        worker_id=identity.worker_id,
        prompt_tokens=finished.usage.prompt_tokens,
        completion_tokens=finished.usage.completion_tokens,
        free_prompt_tokens=finished.usage.free_prompt_tokens,
        finish_reason=FINISH_REASON_TO_PROTO[finished.finish_reason],
        billable=is_billable(finished),
        finished_unix_ms=finished_unix_ms,
        unbilled_reason=finished.unbilled_reason,
    )
