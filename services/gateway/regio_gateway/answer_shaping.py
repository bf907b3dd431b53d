"""How an answer shows the worker's reasoning and tool calls to the client.

The worker always sends reasoning apart from the answer (`reasoning_delta`); the activation's
`thinking.reasoning_output` (or the client's `reasoning.exclude`) decides what the client sees:
a `reasoning_content` field, `<think>…</think>` at the start of `content`, or nothing."""

from __future__ import annotations

from regio.inference.v1 import inference_pb2
from regio_common.config_records import ReasoningOutput
from regio_gateway.protocol.chat_completion import AssistantMessage, ChoiceDelta
from regio_gateway.protocol.tools import ChoiceDeltaToolCall, ToolCall

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def assistant_message(
    text: str, reasoning: str, calls: list[ToolCall], output: ReasoningOutput
) -> AssistantMessage:
    """The message of a JSON answer; `content` is null when the answer is only tool calls."""
    if output == "think_tags" and reasoning:
        text = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{text}"
    return AssistantMessage(
        content=text if text or not calls else None,
        reasoning_content=reasoning if output == "reasoning_content" and reasoning else None,
        tool_calls=calls or None,
    )


class StreamShaper:
    """Turns a worker's delta chunks into stream deltas, in the order the worker sent them.

    With `think_tags`, `<think>` opens with the first reasoning and `</think>` closes before the
    first answer text or tool call, or at the end (`close`) when the answer never came."""

    def __init__(self, output: ReasoningOutput) -> None:
        self._output = output
        self._open_tag = False

    def delta(self, chunk: inference_pb2.InferenceChunk) -> ChoiceDelta | None:
        """The client's delta for one worker chunk; None when it has nothing to show."""
        content = ""
        reasoning_content = None
        if chunk.reasoning_delta and self._output == "reasoning_content":
            reasoning_content = chunk.reasoning_delta
        elif chunk.reasoning_delta and self._output == "think_tags":
            content = ("" if self._open_tag else THINK_OPEN) + chunk.reasoning_delta
            self._open_tag = True
        if self._open_tag and (chunk.text_delta or chunk.tool_calls):
            content += THINK_CLOSE
            self._open_tag = False
        content += chunk.text_delta
        calls = [ChoiceDeltaToolCall.from_proto(piece) for piece in chunk.tool_calls]
        if not (content or reasoning_content or calls):
            return None
        return ChoiceDelta(
            content=content or None, reasoning_content=reasoning_content, tool_calls=calls or None
        )

    def close(self) -> ChoiceDelta | None:
        """The `</think>` a stream still owes when its reasoning was its last output."""
        if not self._open_tag:
            return None
        self._open_tag = False
        return ChoiceDelta(content=THINK_CLOSE)
