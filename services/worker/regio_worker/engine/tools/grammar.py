"""The grammar of an answer that may call tools (llama.cpp GBNF): one (or, with parallel calls,
one or more) `<tool_call>` blocks whose JSON is `{"name": <a declared function>, "arguments":
<that function's parameters schema>}`, converted by llama-cpp-python's JSON-schema converter
(bounded whitespace, so a small model cannot spend its budget on blank lines).

- tool_choice "required" or a named function: the grammar holds from the first answer token;
- "auto": the grammar is lazy, triggered by `<tool_call>`: free text stays free until the model
  starts a call; with JSON mode, the answer is either calls or the JSON (no trigger needed,
  both are constrained from the first token);
- "none" or no tools: JSON mode's grammar or none."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from regio_worker.engine.base import (
    GenerationRequest,
    OutputFormat,
    ToolChoiceMode,
    ToolDefinition,
)
from regio_worker.engine.json_output import ANY_OBJECT_SCHEMA, output_grammar
from regio_worker.engine.tools.markup import TOOL_CALL_END, TOOL_CALL_START

# Our rule names; the converter's are derived from "call-<i>", "answer" and the schemas' names.
CALLS_RULE = "regio-tool-calls"
CALL_RULE = "regio-tool-call"
CALL_JSON_RULE = "regio-tool-call-json"
ANSWER_JSON_RULE = "answer"
# A newline may follow the opening tag and precede the closing one (Qwen's own layout), and
# separate two calls; nothing else but the calls' JSON.
CALL_BLOCK = f'"{TOOL_CALL_START}" "\\n"? {CALL_JSON_RULE} "\\n"? "{TOOL_CALL_END}"'
CALL_SEPARATOR = '"\\n"?'


class InvalidToolsError(ValueError):
    """A tool's parameters schema that the grammar cannot enforce."""


@dataclass(frozen=True)
class AnswerGrammar:
    grammar: str = ""  # GBNF with root rule "root"; "": free text
    # Non-empty: the grammar is lazy and applies from the first of these words on (the word
    # included); before it, the text is free.
    triggers: tuple[str, ...] = ()


def answer_grammar(request: GenerationRequest) -> AnswerGrammar:
    """The grammar of the request's answer: tool calls and JSON mode together.

    Raises InvalidToolsError for a tool's schema and ValueError for the response format's."""
    if not request.may_call_tools:
        return AnswerGrammar(output_grammar(request))
    # Imported here, as in json_output.py: the module stays importable without llama.cpp.
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    callable_tools = _callable(request)
    call_rules = [_call_rule(converter, tool, index) for index, tool in enumerate(callable_tools)]
    rules = {
        CALL_JSON_RULE: " | ".join(call_rules),
        CALL_RULE: CALL_BLOCK,
        CALLS_RULE: (
            f"{CALL_RULE} ({CALL_SEPARATOR} {CALL_RULE})*"
            if request.parallel_tool_calls
            else CALL_RULE
        ),
    }
    if request.tool_choice is not ToolChoiceMode.AUTO:
        return AnswerGrammar(_grammar(converter, rules, root=CALLS_RULE))
    if request.output_format is OutputFormat.TEXT:
        return AnswerGrammar(_grammar(converter, rules, root=CALLS_RULE), (TOOL_CALL_START,))
    answer = _answer_json_rule(converter, request)
    return AnswerGrammar(_grammar(converter, rules, root=f"{CALLS_RULE} | {answer}"))


def _callable(request: GenerationRequest) -> list[ToolDefinition]:
    if request.tool_choice is not ToolChoiceMode.FUNCTION:
        return list(request.tools)
    named = [tool for tool in request.tools if tool.name == request.tool_choice_function]
    if not named:
        raise InvalidToolsError(
            f"tool_choice: the function {request.tool_choice_function!r} is not one of the tools."
        )
    return named


def _call_rule(converter: Any, tool: ToolDefinition, index: int) -> str:
    """The rule of one function's call JSON, added to the converter."""
    try:
        parameters = json.loads(tool.parameters_json or ANY_OBJECT_SCHEMA)
        if not isinstance(parameters, dict):
            raise ValueError("the schema is not a JSON object")
        # "$ref"s inside resolve against the parameters schema itself (a url per tool keeps
        # them apart).
        parameters = converter.resolve_refs(parameters, f"tool-{index}")
        call = {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": parameters},
            "required": ["name", "arguments"],
        }
        rule: str = converter.visit(call, f"call-{index}")
    except Exception as error:  # the converter raises whatever it meets first
        raise InvalidToolsError(
            f"tools: the parameters schema of the function {tool.name!r} cannot be enforced "
            f"({error})"
        ) from None
    return rule


def _answer_json_rule(converter: Any, request: GenerationRequest) -> str:
    schema_text = (
        request.json_schema if request.output_format is OutputFormat.JSON_SCHEMA else ""
    ) or ANY_OBJECT_SCHEMA
    try:
        schema = converter.resolve_refs(json.loads(schema_text), "answer")
        rule: str = converter.visit(schema, ANSWER_JSON_RULE)
    except Exception as error:
        raise ValueError(f"response_format: the JSON schema cannot be enforced ({error})") from None
    return rule


def _grammar(converter: Any, rules: dict[str, str], *, root: str) -> str:
    ours = "\n".join(f"{name} ::= {rule}" for name, rule in {"root": root, **rules}.items())
    converted: str = converter.format_grammar()
    return f"{ours}\n{converted}"
