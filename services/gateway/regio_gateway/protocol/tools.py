"""Function calling, OpenAI's way: the `tools` a request declares, its `tool_choice`, the calls
of assistant messages (in a conversation and in answers) and their stream pieces."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from regio.inference.v1 import inference_pb2
from regio_common.errors import InvalidRequest

# OpenAI's rule for function names.
ToolName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
# Tokens the worker's prompt may spend, at most, on the tools section's instruction text (about
# 600 bytes: regio_worker.engine.tools.markup), on the markup around each tool, around each call
# (`<tool_call>{"name": …, "arguments": …}</tool_call>`) and around each tool result
# (`<tool_response name="…">…</tool_response>`): the hold's prompt bound adds them to the bytes
# of what the client sent, as a token covers at least one byte.
TOOLS_SECTION_TOKENS = 1024
TOKENS_PER_TOOL = 16
TOKENS_PER_TOOL_CALL = 64
TOKENS_PER_TOOL_RESULT = 64


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: ToolName
    description: str | None = None
    # A JSON schema of the arguments object; absent: any object.
    parameters: dict[str, Any] | None = None
    # Accepted for compatibility: the worker's grammar enforces the schema in any case.
    strict: bool | None = None


class Tool(BaseModel):
    """One entry of `tools`."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDefinition

    def to_proto(self) -> inference_pb2.ToolDefinition:
        function = self.function
        return inference_pb2.ToolDefinition(
            name=function.name,
            description=function.description or "",
            parameters_json=json.dumps(function.parameters) if function.parameters else "",
            strict=bool(function.strict),
        )


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: ToolName


class NamedToolChoice(BaseModel):
    """`tool_choice` naming the one function the model must call."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice

TOOL_CHOICE_MODES: dict[str, inference_pb2.ToolChoice.Mode.ValueType] = {
    "auto": inference_pb2.ToolChoice.MODE_AUTO,
    "none": inference_pb2.ToolChoice.MODE_NONE,
    "required": inference_pb2.ToolChoice.MODE_REQUIRED,
}


def tool_choice_proto(choice: ToolChoice | None) -> inference_pb2.ToolChoice:
    if isinstance(choice, NamedToolChoice):
        return inference_pb2.ToolChoice(
            mode=inference_pb2.ToolChoice.MODE_FUNCTION, function_name=choice.function.name
        )
    return inference_pb2.ToolChoice(mode=TOOL_CHOICE_MODES[choice or "auto"])


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str  # JSON text of the arguments object, as the model wrote it


class ToolCall(BaseModel):
    """A call of an assistant message: in a conversation sent back, or in an answer."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall

    def to_proto(self) -> inference_pb2.ToolCall:
        return inference_pb2.ToolCall(
            id=self.id, name=self.function.name, arguments=self.function.arguments
        )


class ChoiceDeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ChoiceDeltaToolCall(BaseModel):
    """A piece of a call in a stream: the first piece of an index carries its id, type and name;
    later pieces only more of `arguments` (the OpenAI SDK accumulates them that way)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChoiceDeltaFunctionCall

    @classmethod
    def from_proto(cls, piece: inference_pb2.ToolCallDelta) -> ChoiceDeltaToolCall:
        if piece.id:
            return cls(
                index=piece.index,
                id=piece.id,
                type="function",
                function=ChoiceDeltaFunctionCall(name=piece.name, arguments=piece.arguments),
            )
        return cls(index=piece.index, function=ChoiceDeltaFunctionCall(arguments=piece.arguments))


class ToolCallCollector:
    """Joins a worker's call pieces into whole calls, in index order."""

    def __init__(self) -> None:
        self._calls: dict[int, inference_pb2.ToolCall] = {}

    def add(self, pieces: Sequence[inference_pb2.ToolCallDelta]) -> None:
        for piece in pieces:
            call = self._calls.setdefault(piece.index, inference_pb2.ToolCall())
            if piece.id:
                call.id, call.name = piece.id, piece.name
            call.arguments += piece.arguments

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
            for _, call in sorted(self._calls.items())
        ]


class ToolTurn(Protocol):
    """What the conversation checks read of a message."""

    @property
    def role(self) -> str: ...

    @property
    def tool_calls(self) -> list[ToolCall] | None: ...

    @property
    def tool_call_id(self) -> str | None: ...

    @property
    def name(self) -> str | None: ...


def check_tool_request(tools: list[Tool] | None, choice: ToolChoice | None) -> None:
    """Unique tool names, and a `tool_choice` only with tools, naming a declared one."""
    names = [tool.function.name for tool in tools or []]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidRequest(
            f"Invalid value for 'tools': function names must be unique; "
            f"{', '.join(repr(name) for name in duplicates)} is declared twice.",
            param="tools",
        )
    if choice is None:
        return
    if not names:
        raise InvalidRequest(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            param="tool_choice",
        )
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': the function '{choice.function.name}' is not "
            "one of 'tools'.",
            param="tool_choice",
        )


def check_tool_turns(messages: Sequence[ToolTurn]) -> None:
    """Calls only in assistant messages; every tool message answers an earlier call."""
    called: set[str] = set()
    for index, message in enumerate(messages):
        if message.tool_calls and message.role != "assistant":
            raise InvalidRequest(
                f"Invalid value for 'messages[{index}].tool_calls': only assistant messages "
                "carry tool calls.",
                param=f"messages[{index}].tool_calls",
            )
        called.update(call.id for call in message.tool_calls or [])
        if message.role != "tool":
            continue
        if not message.tool_call_id:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{index}].tool_call_id'.",
                param=f"messages[{index}].tool_call_id",
            )
        if message.tool_call_id not in called:
            raise InvalidRequest(
                f"Invalid parameter: messages[{index}] has role 'tool' but its tool_call_id "
                f"'{message.tool_call_id}' answers no tool call of an earlier assistant message.",
                param="messages",
            )


def tools_token_bound(tools: list[Tool] | None) -> int:
    """At most the prompt tokens of the tools section: a token covers at least one byte of the
    definitions' JSON (ASCII-escaped, the longest way the worker may write it) or of the
    worker's instruction text around them."""
    if not tools:
        return 0
    return TOOLS_SECTION_TOKENS + sum(
        len(json.dumps(tool.function.model_dump(exclude_none=True))) + TOKENS_PER_TOOL
        for tool in tools
    )


def tool_turn_token_bound(message: ToolTurn) -> int:
    """At most the prompt tokens the worker adds to a message for its calls, or around a tool
    result, beyond the message's text."""
    if message.role == "tool":
        return TOKENS_PER_TOOL_RESULT + len(json.dumps(message.name or ""))
    return sum(
        len(json.dumps(call.function.name))
        + _rendered_arguments_bound(call.function.arguments)
        + TOKENS_PER_TOOL_CALL
        for call in message.tool_calls or []
    )


def _rendered_arguments_bound(arguments: str) -> int:
    """At most the bytes of the arguments as the worker writes them: parsed and written again
    (spaced separators), or quoted as a string when they are not JSON; ASCII-escaped JSON is
    never shorter than the worker's UTF-8."""
    try:
        rewritten = len(json.dumps(json.loads(arguments)))
    except (ValueError, RecursionError):
        rewritten = 0
    return max(rewritten, len(json.dumps(arguments)))
