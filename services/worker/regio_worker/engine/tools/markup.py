"""The text of the tool convention in prompts: the tools section of the system text, calls in
assistant turns and tool results in user turns."""

from __future__ import annotations

import json
from typing import Any

from regio_worker.engine.base import (
    ChatMessage,
    GenerationRequest,
    ToolChoiceMode,
    ToolDefinition,
)

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
TOOL_RESPONSE_START = "<tool_response"
TOOL_RESPONSE_END = "</tool_response>"

TOOLS_HEADING = (
    "# Tools\n\nYou can call functions to help you answer. The functions, one JSON object each:\n"
)
TOOLS_INSTRUCTIONS = (
    "To call a function, write its name and its arguments as JSON between "
    f"{TOOL_CALL_START} and {TOOL_CALL_END}, like this:\n"
    f'{TOOL_CALL_START}{{"name": "function_name", "arguments": {{"argument": "value"}}}}'
    f"{TOOL_CALL_END}\n"
    "The results come back between <tool_response> and </tool_response>.\n"
)
SEVERAL_CALLS = "To call several functions, write one block per call."
ONE_CALL = "Call at most one function."
CHOICE_INSTRUCTIONS = {
    ToolChoiceMode.AUTO: "Call a function only when it helps; otherwise answer in plain text.",
    ToolChoiceMode.NONE: "Do not call any function now: answer in plain text.",
    ToolChoiceMode.REQUIRED: "Answer now with function calls only.",
}


def tools_section(request: GenerationRequest) -> str:
    """The tools part of the system text ("" without tools). Every declared function is listed
    whatever the tool choice, so the section (a prompt prefix the KV cache reuses) stays the
    same across the turns of a conversation except for its last line."""
    if not request.tools:
        return ""
    tools = "\n".join(_tool_line(tool) for tool in request.tools)
    listing = f"<tools>\n{tools}\n</tools>\n\n"
    return TOOLS_HEADING + listing + TOOLS_INSTRUCTIONS + _choice_instruction(request)


def _choice_instruction(request: GenerationRequest) -> str:
    if request.tool_choice is ToolChoiceMode.FUNCTION:
        instruction = f"Answer now by calling the function {request.tool_choice_function}."
    else:
        instruction = CHOICE_INSTRUCTIONS[request.tool_choice]
    if request.tool_choice is ToolChoiceMode.NONE:
        return instruction
    return f"{instruction} {SEVERAL_CALLS if request.parallel_tool_calls else ONE_CALL}"


def _tool_line(tool: ToolDefinition) -> str:
    line: dict[str, Any] = {"name": tool.name}
    if tool.description:
        line["description"] = tool.description
    if tool.parameters_json:
        line["parameters"] = _json_or_text(tool.parameters_json)
    return _dumps(line)


def call_block(name: str, arguments: str) -> str:
    """One call as the model writes it; `arguments` is the JSON text of the arguments."""
    call = {"name": name, "arguments": _json_or_text(arguments or "{}")}
    return f"{TOOL_CALL_START}{_dumps(call)}{TOOL_CALL_END}"


def assistant_text(message: ChatMessage) -> str:
    """An assistant turn's text with its calls written after it."""
    blocks = [call_block(call.name, call.arguments) for call in message.tool_calls]
    return "\n".join([message.content, *blocks] if message.content else blocks)


def tool_response(content: str, name: str) -> str:
    """A tool's result as the text of a user turn (the function's name when known)."""
    opening = f"{TOOL_RESPONSE_START} name={_dumps(name)}>" if name else f"{TOOL_RESPONSE_START}>"
    return f"{opening}\n{content}\n{TOOL_RESPONSE_END}"


def _json_or_text(text: str) -> Any:
    """The JSON value of `text`; text that is not JSON stays a string (rendered quoted)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _dumps(value: Any) -> str:
    # Real characters rather than \u escapes: fewer tokens, and what the model reads best.
    return json.dumps(value, ensure_ascii=False)
