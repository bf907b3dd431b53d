"""Tool calling on the real Gemma 3 270M GGUF: the grammar makes the small model's calls valid
(tool_choice "required" or a named function), a conversation with tool results is read and
answered with text, "none" answers with text; and the grammars themselves, checked token by
token against the model's vocabulary: what they accept, what they refuse, when they may end.
Generations are greedy (temperature 0) and short."""

from __future__ import annotations

import ctypes
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp
import pytest
from llama_cpp import Llama

from regio_common.catalogue import Route
from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    ToolDefinition,
)
from regio_worker.engine.batch_scheduler import SamplingSettings, _grammar_sampler
from regio_worker.engine.llama_batched import BatchedLlamaEngine
from regio_worker.engine.tools.grammar import answer_grammar

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
TIME_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string"}},
    "required": ["zone"],
}
WEATHER = ToolDefinition(
    "get_weather", "Get the current weather in a city", json.dumps(WEATHER_PARAMETERS)
)
CLOCK = ToolDefinition(
    "get_time", "Get the current time in a time zone", json.dumps(TIME_PARAMETERS)
)
TOOLS = (WEATHER, CLOCK)
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
async def engine(gemma_model_path: Path, gemma_route: Route) -> AsyncIterator[BatchedLlamaEngine]:
    loaded = BatchedLlamaEngine(
        gemma_model_path,
        chat_format=gemma_route.source.chat_format,
        n_ctx=gemma_route.context_length,
        n_threads=2,
        slots=1,
    )
    yield loaded
    await loaded.close()


def greedy(*messages: ChatMessage, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        transaction_id=f"txn-{uuid.uuid4().hex}",
        messages=messages,
        **{"temperature": 0.0, "tools": TOOLS, **fields},
    )


async def run(engine: BatchedLlamaEngine, request: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in engine.generate(request)]


def calls_of(events: list[GenerationEvent]) -> list[ToolCallDelta]:
    return [event for event in events if isinstance(event, ToolCallDelta)]


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def final_of(events: list[GenerationEvent]) -> GenerationFinished:
    assert isinstance(events[-1], GenerationFinished)
    return events[-1]


def assert_valid_call(call: ToolCallDelta) -> None:
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call.id)
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


# --- the model's answers ----------------------------------------------------------------------


async def test_a_named_function_is_called_with_arguments_that_follow_its_schema(
    engine: BatchedLlamaEngine,
) -> None:
    request = greedy(
        ChatMessage("user", QUESTION),
        tool_choice=ToolChoiceMode.FUNCTION,
        tool_choice_function="get_weather",
        parallel_tool_calls=False,
        max_tokens=100,
    )
    events = await run(engine, request)
    [call] = calls_of(events)
    assert call.index == 0 and call.name == "get_weather"
    assert_valid_call(call)
    assert text_of(events) == ""
    final = final_of(events)
    assert final.finish_reason is FinishReason.TOOL_CALLS
    # The call's tokens are completion tokens; the tools section is part of the billed prompt.
    assert final.usage.completion_tokens >= len(call.arguments) // 8
    without_tools = await run(engine, greedy(ChatMessage("user", QUESTION), tools=(), max_tokens=1))
    assert final.usage.prompt_tokens > final_of(without_tools).usage.prompt_tokens + 100


async def test_required_gives_only_valid_calls_of_declared_functions(
    engine: BatchedLlamaEngine,
) -> None:
    request = greedy(
        ChatMessage("user", QUESTION), tool_choice=ToolChoiceMode.REQUIRED, max_tokens=300
    )
    events = await run(engine, request)
    calls = calls_of(events)
    assert calls and [call.index for call in calls] == list(range(len(calls)))
    for call in calls:
        assert_valid_call(call)
    assert len({call.id for call in calls}) == len(calls)
    assert text_of(events) == ""
    # The grammar ends the answer after a call, or the model repeats one (dropped, the end).
    assert final_of(events).finish_reason is FinishReason.TOOL_CALLS


async def test_a_conversation_with_tool_results_is_answered_with_text(
    engine: BatchedLlamaEngine,
) -> None:
    call = ToolCall("call_abc", "get_weather", '{"city": "Paris"}')
    result = json.dumps({"temperature": 21, "unit": "celsius", "sky": "sunny"})
    conversation = (
        ChatMessage("user", QUESTION),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", result, tool_call_id="call_abc"),
    )
    events = await run(
        engine, greedy(*conversation, tool_choice=ToolChoiceMode.NONE, max_tokens=40)
    )
    assert not calls_of(events)
    assert text_of(events).strip()
    assert final_of(events).finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    # The result is part of the prompt.
    shorter = (*conversation[:2], ChatMessage("tool", "{}", tool_call_id="call_abc"))
    with_empty_result = await run(
        engine, greedy(*shorter, tool_choice=ToolChoiceMode.NONE, max_tokens=1)
    )
    assert (
        final_of(events).usage.prompt_tokens > final_of(with_empty_result).usage.prompt_tokens + 10
    )


async def test_auto_lets_the_model_decide_to_call_on_a_follow_up_question(
    engine: BatchedLlamaEngine,
) -> None:
    """The lazy grammar: nothing forces a call, the model starts one itself (Gemma 270M does
    for this follow-up) and the grammar makes it valid."""
    call = ToolCall("call_abc", "get_weather", '{"city": "Berlin"}')
    conversation = (
        ChatMessage("user", "What's the weather in Berlin?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "Sunny", tool_call_id="call_abc"),
        ChatMessage("user", "And in Rome?"),
    )
    events = await run(engine, greedy(*conversation, tools=(WEATHER,), max_tokens=80))
    [call_made] = calls_of(events)
    assert call_made.name == "get_weather"
    assert_valid_call(call_made)
    assert final_of(events).finish_reason is FinishReason.TOOL_CALLS


async def test_tool_choice_none_answers_with_text(engine: BatchedLlamaEngine) -> None:
    events = await run(
        engine,
        greedy(ChatMessage("user", QUESTION), tool_choice=ToolChoiceMode.NONE, max_tokens=30),
    )
    assert not calls_of(events)
    assert text_of(events)
    assert final_of(events).finish_reason in (FinishReason.STOP, FinishReason.LENGTH)


async def test_a_text_answer_keeps_a_logprob_for_every_token(engine: BatchedLlamaEngine) -> None:
    # "auto": the answer goes through the call parser, which holds text back at times.
    events = await run(engine, greedy(ChatMessage("user", QUESTION), max_tokens=12, top_logprobs=2))
    texts = [event for event in events if isinstance(event, TextDelta)]
    assert not calls_of(events)
    final = final_of(events)
    assert final.finish_reason is FinishReason.LENGTH
    logprobs = [entry for event in texts for entry in event.logprobs]
    assert len(logprobs) == final.usage.completion_tokens == 12
    assert b"".join(entry.token for entry in logprobs).decode() == text_of(events)


async def test_a_schema_that_cannot_be_enforced_is_a_clear_error(
    engine: BatchedLlamaEngine,
) -> None:
    broken = ToolDefinition("lookup", parameters_json='{"$ref": "#/$defs/missing"}')
    events = await run(
        engine,
        greedy(ChatMessage("user", QUESTION), tools=(broken,), tool_choice=ToolChoiceMode.REQUIRED),
    )
    [final] = events
    assert isinstance(final, GenerationFinished)
    assert final.finish_reason is FinishReason.ERROR
    assert final.error_code == "invalid_tools"
    assert "'lookup'" in final.error_message
    assert final.usage.completion_tokens == 0


# --- the grammars, token by token -------------------------------------------------------------


class GrammarCheck:
    """Feeds text to a grammar sampler token by token, as decoding would."""

    def __init__(self, vocabulary: Llama, request: GenerationRequest) -> None:
        grammar = answer_grammar(request)
        settings = SamplingSettings(
            temperature=0.0,
            top_p=1.0,
            top_k=40,
            min_p=0.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            seed=1,
            grammar=grammar.grammar,
            grammar_triggers=grammar.triggers,
        )
        self._vocabulary = vocabulary
        self._vocab = llama_cpp.llama_model_get_vocab(vocabulary.model)
        self._sampler = _grammar_sampler(settings, self._vocab)
        assert self._sampler

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self._sampler)

    def allows(self, token: int) -> bool:
        candidate = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 1.0, 0.0))
        array = llama_cpp.llama_token_data_array(candidate, 1, -1, False)
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))
        return not math.isinf(candidate[0].logit)

    def feed(self, text: str) -> bool:
        """True when the grammar takes every token of `text` (fed up to the first refused)."""
        for token in self._vocabulary.tokenize(text.encode(), add_bos=False, special=False):
            if not self.allows(token):
                return False
            llama_cpp.llama_sampler_accept(self._sampler, token)
        return True

    def may_end(self) -> bool:
        return self.allows(llama_cpp.llama_vocab_eos(self._vocab))


@pytest.fixture
def grammar_check(vocabulary: Llama) -> Iterator[Any]:
    checks: list[GrammarCheck] = []

    def make(**fields: Any) -> GrammarCheck:
        check = GrammarCheck(vocabulary, greedy(ChatMessage("user", QUESTION), **fields))
        checks.append(check)
        return check

    yield make
    for check in checks:
        check.close()


CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'


@pytest.mark.parametrize(
    "refused",
    [
        'Sure! <tool_call>{"name": "get_weather"',  # text before the call
        '<tool_call>{"name": "launch_rockets"',  # not a declared function
        '<tool_call>{"name": "get_weather", "arguments": {"unit": "kelvin"',  # not in the enum
        '<tool_call>{"name": "get_weather", "arguments": {"unit": "celsius"}',  # no city
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "wind"',  # extra
    ],
)
def test_required_refuses_anything_but_valid_calls(grammar_check: Any, refused: str) -> None:
    assert not grammar_check(tool_choice=ToolChoiceMode.REQUIRED).feed(refused)


def test_required_takes_valid_calls_and_may_end_only_after_one(grammar_check: Any) -> None:
    check = grammar_check(tool_choice=ToolChoiceMode.REQUIRED)
    assert not check.may_end()
    assert check.feed(CALL)
    assert not check.may_end()
    assert check.feed("</tool_call>")
    assert check.may_end()
    assert check.feed('\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n')
    assert check.feed("</tool_call>")
    assert check.may_end()


def test_a_named_function_is_the_only_one_allowed(grammar_check: Any) -> None:
    named = {"tool_choice": ToolChoiceMode.FUNCTION, "tool_choice_function": "get_time"}
    assert not grammar_check(**named).feed('<tool_call>{"name": "get_weather"')
    assert grammar_check(**named).feed('<tool_call>{"name": "get_time", "arguments": {"zone": "')


def test_without_parallel_calls_the_answer_must_end_after_the_first(grammar_check: Any) -> None:
    check = grammar_check(tool_choice=ToolChoiceMode.REQUIRED, parallel_tool_calls=False)
    assert check.feed(CALL + "</tool_call>")
    assert check.may_end()
    assert not check.feed("\n<tool_call>")


def test_auto_leaves_text_free_until_a_call_starts(grammar_check: Any) -> None:
    check = grammar_check()  # tool_choice "auto"
    assert check.feed("Let me look that up: {not JSON} <b>bold</b>\n")
    assert check.may_end()  # a plain text answer
    assert check.feed(CALL)
    assert not check.may_end()  # inside a call, the grammar holds
    assert not check.feed(', "wind"')


def test_auto_refuses_an_undeclared_function_once_the_call_started(grammar_check: Any) -> None:
    check = grammar_check()
    assert check.feed("Checking.")
    assert not check.feed('<tool_call>{"name": "launch_rockets"')
