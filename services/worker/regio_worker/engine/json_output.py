"""JSON mode: the grammar that constrains decoding to JSON (llama.cpp's GBNF, converted from a
JSON schema by llama-cpp-python's converter), and the check of the finished output, which the
worker's server applies whatever the engine (an upstream behind the proxy engine may not
enforce the format).

Even with the grammar, an answer cut by max_tokens is not valid JSON; such an answer is not
charged, and its usage record says why."""

from __future__ import annotations

import json
from dataclasses import replace

from regio_worker.engine.base import (
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    OutputFormat,
)

# Any JSON object. Through the converter (rather than llama.cpp's generic JSON grammar) so that
# whitespace is bounded: a small model cannot spend its whole budget on blank lines.
ANY_OBJECT_SCHEMA = '{"type": "object"}'
INVALID_JSON = "invalid_json"


def output_grammar(request: GenerationRequest) -> str:
    """The GBNF for the request's output format ("" for free text); ValueError when the schema
    cannot be enforced."""
    if request.output_format is OutputFormat.TEXT:
        return ""
    # Imported here: the check below serves every engine, and only this needs llama.cpp.
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = request.json_schema if request.output_format is OutputFormat.JSON_SCHEMA else ""
    try:
        json.loads(schema or ANY_OBJECT_SCHEMA)
        grammar: str = json_schema_to_gbnf(schema or ANY_OBJECT_SCHEMA)
    except Exception as error:  # the converter raises whatever it meets first
        raise ValueError(f"response_format: the JSON schema cannot be enforced ({error})") from None
    return grammar


def checked_json_output(event: GenerationFinished, text: str) -> GenerationFinished:
    """The final event, marked not billable when a finished answer is not valid JSON. A
    cancelled or failed one is left alone: what was delivered before that is billed as usual."""
    if event.finish_reason not in (FinishReason.STOP, FinishReason.LENGTH):
        return event
    try:
        json.loads(text)
    except ValueError:
        return replace(event, unbilled_reason=INVALID_JSON)
    return event
