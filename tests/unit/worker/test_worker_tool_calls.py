"""Tool calling in the llama.cpp engine, without a model: the tools section and the tool turns
of the prompt, the grammar chosen per tool_choice, and the streaming parser of the answer text
(split anywhere), its call ids and its finish reason."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence

import pytest

from regio_worker.engine.base import (
    ChatMessage,
    ContextCompressed,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    OutputFormat,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    ToolDefinition,
    Usage,
)
from regio_worker.engine.chat_prompt import ChatPromptBuilder, FormattedChat
from regio_worker.engine.tools.grammar import InvalidToolsError, answer_grammar
from regio_worker.engine.tools.markup import tools_section
from regio_worker.engine.tools.parser import ToolCallParser

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
WEATHER = ToolDefinition("get_weather", "The weather in a city", json.dumps(WEATHER_PARAMETERS))
CLOCK = ToolDefinition("get_time")
TOOLS = (WEATHER, CLOCK)
NAMES = ("get_weather", "get_time")
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def tool_request(**fields: object) -> GenerationRequest:
    return GenerationRequest("txn-1", (ChatMessage("user", "weather?"),), **fields)  # type: ignore[arg-type]


# --- the prompt -------------------------------------------------------------------------------


def test_tools_section_lists_every_function_and_the_call_convention() -> None:
    section = tools_section(tool_request(tools=TOOLS))
    lines = section.splitlines()
    listed = [json.loads(line) for line in lines if line.startswith('{"name": "get_')]
    assert listed == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": WEATHER_PARAMETERS,
        },
        {"name": "get_time"},
    ]
    assert '<tool_call>{"name": "function_name", "arguments": {' in section
    assert "<tool_response>" in section


@pytest.mark.parametrize(
    ("fields", "instruction"),
    [
        ({}, "Call a function only when it helps"),
        ({"tool_choice": ToolChoiceMode.NONE}, "Do not call any function now"),
        ({"tool_choice": ToolChoiceMode.REQUIRED}, "Answer now with function calls only."),
        (
            {"tool_choice": ToolChoiceMode.FUNCTION, "tool_choice_function": "get_time"},
            "Answer now by calling the function get_time.",
        ),
        ({"parallel_tool_calls": False}, "Call at most one function."),
    ],
)
def test_tools_section_ends_with_what_the_tool_choice_asks(
    fields: dict[str, object], instruction: str
) -> None:
    last_line = tools_section(tool_request(tools=TOOLS, **fields)).splitlines()[-1]
    assert instruction in last_line


def test_no_tools_no_section() -> None:
    assert tools_section(tool_request()) == ""


def recording_builder(keeps_system: bool) -> tuple[ChatPromptBuilder, list[list[dict[str, str]]]]:
    seen: list[list[dict[str, str]]] = []

    def format_chat(messages: list[dict[str, str]]) -> FormattedChat:
        seen.append(messages)
        kept = [m for m in messages if keeps_system or m["role"] != "system"]
        return FormattedChat(" ".join(f"<{m['role']}> {m['content']}" for m in kept), False)

    def word_tokens(text: str, add_bos: bool) -> list[int]:
        return [len(word) for word in text.split()]

    return ChatPromptBuilder(format_chat, word_tokens), seen


def test_tools_section_comes_last_in_the_system_text_and_is_billed() -> None:
    builder, seen = recording_builder(keeps_system=True)
    messages = [ChatMessage("system", "be brief"), ChatMessage("user", "weather?")]
    prompt = builder.build(messages, "free words", "TOOLS SECTION")
    assert seen[-2][0] == {"role": "system", "content": "free words\n\nbe brief\n\nTOOLS SECTION"}
    assert prompt.free_prompt_tokens == 2  # the free words only
    assert builder.count(messages, "free words", "TOOLS SECTION") == len(prompt.tokens)
    assert builder.count(messages, "free words") == len(prompt.tokens) - 2


def test_tool_calls_and_results_become_text_turns_of_user_and_assistant() -> None:
    builder, seen = recording_builder(keeps_system=False)
    calls = (
        ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_2", "get_time", "{}"),
    )
    builder.build(
        [
            ChatMessage("user", "weather and time in Paris?"),
            ChatMessage("assistant", "Let me look.", tool_calls=calls),
            ChatMessage("tool", "sunny", tool_call_id="call_1"),
            ChatMessage("tool", "noon", tool_call_id="call_2", name="clock"),
            ChatMessage("user", "thanks, and tomorrow?"),
            ChatMessage("assistant", "", tool_calls=calls[:1]),
        ],
        tools_section="TOOLS",
    )
    assert seen[-1] == [
        {"role": "user", "content": "TOOLS\n\nweather and time in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.\n"
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
        },
        # Results (named after their call, or as the message says) and the next user message
        # are one user turn, so that roles keep alternating.
        {
            "role": "user",
            "content": '<tool_response name="get_weather">\nsunny\n</tool_response>\n'
            '<tool_response name="clock">\nnoon\n</tool_response>\n\n'
            "thanks, and tomorrow?",
        },
        {"role": "assistant", "content": CALL},
    ]


def test_arguments_that_are_not_json_are_written_as_a_string() -> None:
    builder, seen = recording_builder(keeps_system=True)
    call = ToolCall("call_1", "get_weather", "city=Paris")
    builder.build([ChatMessage("user", "q"), ChatMessage("assistant", "", tool_calls=(call,))])
    assert seen[-1][-1]["content"] == (
        '<tool_call>{"name": "get_weather", "arguments": "city=Paris"}</tool_call>'
    )


# --- the grammar ------------------------------------------------------------------------------


def test_no_tools_or_tool_choice_none_keeps_json_mode_grammar_only() -> None:
    assert answer_grammar(tool_request()).grammar == ""
    none = answer_grammar(tool_request(tools=TOOLS, tool_choice=ToolChoiceMode.NONE))
    assert (none.grammar, none.triggers) == ("", ())
    json_mode = answer_grammar(
        tool_request(
            tools=TOOLS, tool_choice=ToolChoiceMode.NONE, output_format=OutputFormat.JSON_OBJECT
        )
    )
    assert json_mode.grammar and "tool_call" not in json_mode.grammar


def test_auto_is_lazy_and_triggered_by_the_call_tag() -> None:
    grammar = answer_grammar(tool_request(tools=TOOLS))
    assert grammar.triggers == ("<tool_call>",)
    assert grammar.grammar.startswith("root ::=")
    assert '"\\"get_weather\\""' in grammar.grammar and '"\\"get_time\\""' in grammar.grammar


@pytest.mark.parametrize("choice", [ToolChoiceMode.REQUIRED, ToolChoiceMode.FUNCTION])
def test_required_and_named_calls_are_constrained_from_the_first_token(
    choice: ToolChoiceMode,
) -> None:
    grammar = answer_grammar(
        tool_request(tools=TOOLS, tool_choice=choice, tool_choice_function="get_time")
    )
    assert grammar.triggers == ()
    assert '"\\"get_time\\""' in grammar.grammar
    # A named function is the only one the grammar allows.
    assert ('"\\"get_weather\\""' in grammar.grammar) is (choice is ToolChoiceMode.REQUIRED)


def test_parallel_calls_repeat_the_call_rule_and_single_calls_do_not() -> None:
    parallel = answer_grammar(tool_request(tools=TOOLS, tool_choice=ToolChoiceMode.REQUIRED))
    single = answer_grammar(
        tool_request(tools=TOOLS, tool_choice=ToolChoiceMode.REQUIRED, parallel_tool_calls=False)
    )
    assert re.search(r"^regio-tool-calls ::= .*\)\*$", parallel.grammar, re.MULTILINE)
    assert re.search(r"^regio-tool-calls ::= regio-tool-call$", single.grammar, re.MULTILINE)


def test_auto_with_json_mode_allows_calls_or_the_json_answer_without_a_trigger() -> None:
    grammar = answer_grammar(tool_request(tools=TOOLS, output_format=OutputFormat.JSON_OBJECT))
    assert grammar.triggers == ()
    assert re.search(r"^root ::= regio-tool-calls \| answer$", grammar.grammar, re.MULTILINE)


def test_a_schema_the_grammar_cannot_enforce_names_its_function() -> None:
    broken = ToolDefinition("broken", parameters_json='{"$ref": "#/$defs/missing"}')
    with pytest.raises(InvalidToolsError, match="'broken'"):
        answer_grammar(tool_request(tools=(WEATHER, broken)))
    with pytest.raises(InvalidToolsError, match="'broken'"):
        answer_grammar(tool_request(tools=(ToolDefinition("broken", parameters_json="[1]"),)))


def test_a_named_function_that_is_not_a_tool_is_refused() -> None:
    with pytest.raises(InvalidToolsError, match="'nope'"):
        answer_grammar(
            tool_request(
                tools=TOOLS, tool_choice=ToolChoiceMode.FUNCTION, tool_choice_function="nope"
            )
        )


def test_a_bad_response_format_schema_is_a_response_format_error() -> None:
    request = tool_request(
        tools=TOOLS, output_format=OutputFormat.JSON_SCHEMA, json_schema='{"$ref": "#/nope"}'
    )
    with pytest.raises(ValueError, match="response_format") as raised:
        answer_grammar(request)
    assert not isinstance(raised.value, InvalidToolsError)


# --- the parser -------------------------------------------------------------------------------

FINISHED = GenerationFinished(FinishReason.STOP, Usage(prompt_tokens=5, completion_tokens=9))


def counting_ids() -> Iterable[str]:
    return (f"call_{index}" for index in itertools.count())


def parse(
    pieces: Sequence[str],
    final: GenerationFinished = FINISHED,
    *,
    parallel: bool = True,
    logprobs: bool = False,
) -> list[GenerationEvent]:
    ids = iter(counting_ids())
    parser = ToolCallParser(NAMES, parallel=parallel, new_id=lambda: next(ids))
    events: list[GenerationEvent] = []
    for piece in pieces:
        lp = (TokenLogprob(piece.encode(), -1.0),) if logprobs else ()
        events += parser.events(TextDelta(piece, lp))
    return events + parser.events(final)


def splits(text: str) -> list[list[str]]:
    """`text` in one piece, one character at a time, and cut at every single position."""
    cuts = [[text[:at], text[at:]] for at in range(1, len(text))]
    return [[text], list(text), *cuts]


def text_of(events: Sequence[GenerationEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def calls_of(events: Sequence[GenerationEvent]) -> list[ToolCallDelta]:
    return [event for event in events if isinstance(event, ToolCallDelta)]


def final_of(events: Sequence[GenerationEvent]) -> GenerationFinished:
    assert isinstance(events[-1], GenerationFinished)
    return events[-1]


def test_text_then_a_call_however_the_text_is_split() -> None:
    answer = "I will look it up.\n" + CALL + "\n"
    for pieces in splits(answer):
        events = parse(pieces)
        assert text_of(events) == "I will look it up."
        assert calls_of(events) == [ToolCallDelta(0, "call_0", "get_weather", '{"city":"Paris"}')]
        assert final_of(events).finish_reason is FinishReason.TOOL_CALLS
        assert final_of(events).usage == FINISHED.usage


def test_several_calls_get_their_index_and_own_id() -> None:
    second = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    for pieces in splits(CALL + "\n" + second):
        calls = calls_of(parse(pieces))
        assert [(call.index, call.id, call.name) for call in calls] == [
            (0, "call_0", "get_weather"),
            (1, "call_1", "get_time"),
        ]
        assert [json.loads(call.arguments) for call in calls] == [{"city": "Paris"}, {}]


def test_text_that_only_looks_like_a_call_start_is_returned_unchanged() -> None:
    answer = "a <tool or <tool_cal and x<y \n\n ends with spaces  "
    for pieces in splits(answer):
        events = parse(pieces)
        assert text_of(events) == answer
        assert not calls_of(events)
        assert final_of(events).finish_reason is FinishReason.STOP


def test_a_call_cut_by_max_tokens_is_text_and_the_answer_ends_with_length() -> None:
    cut = '<tool_call>{"name": "get_weather", "argu'
    for pieces in splits("Sure. " + cut):
        events = parse(pieces, GenerationFinished(FinishReason.LENGTH))
        assert text_of(events) == "Sure." + cut
        assert not calls_of(events)
        assert final_of(events).finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize(
    "block",
    [
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>',
    ],
)
def test_a_block_that_is_not_a_call_of_a_declared_function_is_text(block: str) -> None:
    events = parse([block])
    assert text_of(events) == block
    assert not calls_of(events)
    assert final_of(events).finish_reason is FinishReason.STOP


def test_arguments_written_as_a_json_string_are_an_object_again() -> None:
    block = (
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Köln\\"}"}</tool_call>'
    )
    assert calls_of(parse([block]))[0].arguments == '{"city":"Köln"}'


def test_without_parallel_calls_the_answer_is_complete_after_the_first() -> None:
    ids = iter(counting_ids())
    parser = ToolCallParser(NAMES, parallel=False, new_id=lambda: next(ids))
    events = parser.events(TextDelta(CALL))
    assert parser.complete
    events += parser.events(TextDelta('\n<tool_call>{"name": "get_time", "arguments": {}}'))
    # The engine stops generating once the answer is complete: a cancelled end is its own.
    events += parser.events(GenerationFinished(FinishReason.CANCELLED))
    assert [call.name for call in calls_of(events)] == ["get_weather"]
    assert text_of(events) == ""
    assert final_of(events).finish_reason is FinishReason.TOOL_CALLS


def test_a_repeated_call_is_dropped_and_completes_the_answer() -> None:
    ids = iter(counting_ids())
    parser = ToolCallParser(NAMES, parallel=True, new_id=lambda: next(ids))
    other_city = CALL.replace("Paris", "Rome")
    events = parser.events(TextDelta(CALL + other_city))
    assert not parser.complete
    events += parser.events(TextDelta(CALL))
    assert parser.complete
    events += parser.events(GenerationFinished(FinishReason.LENGTH))
    assert [call.arguments for call in calls_of(events)] == [
        '{"city":"Paris"}',
        '{"city":"Rome"}',
    ]
    assert final_of(events).finish_reason is FinishReason.TOOL_CALLS


def test_a_failure_after_calls_stays_a_failure() -> None:
    failed = GenerationFinished(FinishReason.ERROR, error_message="boom", error_code="x")
    assert final_of(parse([CALL], failed)).finish_reason is FinishReason.ERROR
    ids = iter(counting_ids())
    parser = ToolCallParser(NAMES, parallel=False, new_id=lambda: next(ids))
    parser.events(TextDelta(CALL))
    assert final_of(parser.events(failed)).finish_reason is FinishReason.ERROR


def test_logprobs_ride_with_the_text_and_not_with_calls() -> None:
    events = parse(["Hi", " there", "\n", "<tool", "_call>", CALL[11:]], logprobs=True)
    texts = [event for event in events if isinstance(event, TextDelta)]
    assert "".join(event.text for event in texts) == "Hi there"
    tokens = [logprob.token for event in texts for logprob in event.logprobs]
    # The token that began the call rides with the text before it.
    assert tokens[:2] == [b"Hi", b" there"]
    assert b"_call>" not in tokens and CALL[11:].encode() not in tokens


def test_a_plain_answer_keeps_every_logprob_even_of_tokens_without_text() -> None:
    events = parse(["one", " two ", ""], logprobs=True)
    texts = [event for event in events if isinstance(event, TextDelta)]
    assert "".join(event.text for event in texts) == "one two "
    assert [lp.token for event in texts for lp in event.logprobs] == [b"one", b" two ", b""]


def test_reasoning_and_other_events_pass_through_untouched() -> None:
    parser = ToolCallParser(NAMES, parallel=True)
    for event in (ReasoningDelta("<tool_call>hmm"), ContextCompressed(2)):
        assert parser.events(event) == [event]


def test_calls_get_ids_like_openai_ones_that_differ() -> None:
    parser = ToolCallParser(NAMES, parallel=True)
    blocks = "".join(CALL.replace("Paris", f"city {index}") for index in range(50))
    ids = [call.id for call in calls_of(parser.events(TextDelta(blocks)))]
    assert len(set(ids)) == 50
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", call_id) for call_id in ids)
