"""Conversions between the NATS protocol (protobuf) and the engine's values."""

from __future__ import annotations

from dataclasses import dataclass

from regio.inference.v1 import inference_pb2
from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    MediaKind,
    MediaPart,
    OutputFormat,
    ReasoningEffort,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    ToolDefinition,
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
    FinishReason.TOOL_CALLS: inference_pb2.FINISH_REASON_TOOL_CALLS,
}

TOOL_CHOICE_MODES: dict[inference_pb2.ToolChoice.Mode.ValueType, ToolChoiceMode] = {
    inference_pb2.ToolChoice.MODE_AUTO: ToolChoiceMode.AUTO,
    inference_pb2.ToolChoice.MODE_NONE: ToolChoiceMode.NONE,
    inference_pb2.ToolChoice.MODE_REQUIRED: ToolChoiceMode.REQUIRED,
    inference_pb2.ToolChoice.MODE_FUNCTION: ToolChoiceMode.FUNCTION,
}

REASONING_EFFORTS: dict[inference_pb2.Reasoning.Effort.ValueType, ReasoningEffort] = {
    inference_pb2.Reasoning.EFFORT_OFF: ReasoningEffort.OFF,
    inference_pb2.Reasoning.EFFORT_MEDIUM: ReasoningEffort.MEDIUM,
    inference_pb2.Reasoning.EFFORT_HIGH: ReasoningEffort.HIGH,
    inference_pb2.Reasoning.EFFORT_MAX: ReasoningEffort.MAX,
}

MEDIA_KINDS: dict[inference_pb2.MediaPart.Kind.ValueType, MediaKind] = {
    inference_pb2.MediaPart.KIND_IMAGE: MediaKind.IMAGE,
    inference_pb2.MediaPart.KIND_AUDIO: MediaKind.AUDIO,
}


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    country: str
    route: str


def chat_message(message: inference_pb2.ChatMessage) -> ChatMessage:
    return ChatMessage(
        message.role,
        message.content,
        tool_calls=tuple(
            ToolCall(call.id, call.name, call.arguments) for call in message.tool_calls
        ),
        tool_call_id=message.tool_call_id,
        name=message.name,
        media=tuple(
            MediaPart(MEDIA_KINDS[part.kind], part.data, part.mime_type, part.text_offset)
            for part in message.media
            if part.kind in MEDIA_KINDS
        ),
    )


def generation_request(request: inference_pb2.InferenceRequest) -> GenerationRequest:
    sampling = request.sampling
    return GenerationRequest(
        transaction_id=request.transaction_id,
        messages=tuple(chat_message(m) for m in request.messages),
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
        tools=tuple(
            ToolDefinition(tool.name, tool.description, tool.parameters_json, tool.strict)
            for tool in request.tools
        ),
        tool_choice=TOOL_CHOICE_MODES[request.tool_choice.mode],
        tool_choice_function=request.tool_choice.function_name,
        parallel_tool_calls=not request.single_tool_call,
        reasoning_effort=REASONING_EFFORTS[request.reasoning.effort],
        reasoning_budget=request.reasoning.budget_tokens or None,
        stream=request.stream,
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
    text: str = "",
    dropped_messages: int = 0,
    logprobs: tuple[TokenLogprob, ...] = (),
    reasoning: str = "",
    tool_calls: tuple[ToolCallDelta, ...] = (),
) -> inference_pb2.InferenceChunk:
    return inference_pb2.InferenceChunk(
        transaction_id=transaction_id,
        sequence=sequence,
        kind=inference_pb2.CHUNK_KIND_DELTA,
        text_delta=text,
        reasoning_delta=reasoning,
        dropped_messages=dropped_messages,
        logprobs=[logprob_message(entry) for entry in logprobs],
        tool_calls=[
            inference_pb2.ToolCallDelta(
                index=call.index, id=call.id, name=call.name, arguments=call.arguments
            )
            for call in tool_calls
        ],
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
    transaction_id: str,
    sequence: int,
    finished: GenerationFinished,
    dropped_messages: int = 0,
    text: TextDelta | None = None,
) -> inference_pb2.InferenceChunk:
    """`text`: the answer's last gathered text, when its client reads it only at the end."""
    return inference_pb2.InferenceChunk(
        transaction_id=transaction_id,
        sequence=sequence,
        kind=inference_pb2.CHUNK_KIND_FINAL,
        text_delta=text.text if text is not None else "",
        logprobs=[logprob_message(entry) for entry in text.logprobs] if text is not None else [],
        finish_reason=FINISH_REASON_TO_PROTO[finished.finish_reason],
        usage=usage_message(finished.usage),
        error_message=finished.error_message,
        error_code=finished.error_code,
        dropped_messages=dropped_messages,
        thinking_rescued=finished.thinking_rescued,
    )


def usage_message(usage: Usage) -> inference_pb2.Usage:
    return inference_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        free_prompt_tokens=usage.free_prompt_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
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
