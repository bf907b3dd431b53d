"""Tools in chat completion requests: OpenAI's validation (every problem a 400 naming its
parameter), the route's capability, what the worker is sent, and the hold's prompt bound."""

from __future__ import annotations

import json
from typing import Any

import pytest

from regio.inference.v1 import inference_pb2
from regio_common.catalogue import Catalogue, Route
from regio_common.errors import InvalidRequest
from regio_common.settings import DEFAULT_CATALOGUE
from regio_gateway.protocol.chat_completion import ChatCompletionRequest
from regio_worker.engine.tools import markup
from regio_worker.protocol import generation_request

USER = {"role": "user", "content": "What's the weather in Berlin?"}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}
CALL = {
    "id": "call_abc",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Berlin"}'},
}
CALLED = {"role": "assistant", "content": None, "tool_calls": [CALL]}
ANSWERED = {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny, 21 °C"}


@pytest.fixture
def liv() -> Route:
    return Catalogue.load(DEFAULT_CATALOGUE).routes["liv"]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "liv", "messages": [USER], "tools": [WEATHER], **extra}


def inference(request: ChatCompletionRequest, route: Route) -> inference_pb2.InferenceRequest:
    return request.to_inference_request(
        transaction_id="t",
        account_id="a",
        route=route,
        region="eu",
        free_system_prompt="",
        deadline_unix_ms=0,
    )


def refusal(payload: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        ChatCompletionRequest.parse(payload)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (body(tools=[]), "tools"),
        (body(tools=[{"type": "retrieval", "function": WEATHER["function"]}]), "tools[0].type"),
        (body(tools=[{"type": "function"}]), "tools[0].function"),
        (body(tools=[{"type": "function", "function": {"name": "get weather"}}]), None),
        (body(tools=[{"type": "function", "function": {"name": "x" * 65}}]), None),
        (body(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]), None),
        (body(tools=[WEATHER, WEATHER]), "tools"),
        (body(tool_choice="sometimes"), "tool_choice"),
        (body(tool_choice={"type": "function"}), "tool_choice"),
        (body(tool_choice={"type": "function", "function": {"name": "get_time"}}), "tool_choice"),
        ({"model": "liv", "messages": [USER], "tool_choice": "auto"}, "tool_choice"),
        ({"model": "liv", "messages": [USER], "tool_choice": "none"}, "tool_choice"),
        (body(parallel_tool_calls="maybe"), "parallel_tool_calls"),
        (body(messages=[USER, {"role": "tool", "content": "42"}]), "messages[1].tool_call_id"),
        (body(messages=[USER, ANSWERED]), "messages"),
        (body(messages=[USER, ANSWERED, CALLED]), "messages"),
        (body(messages=[{**USER, "tool_calls": [CALL]}]), "messages[0].tool_calls"),
        (body(messages=[USER, {**CALLED, "tool_calls": [{"id": "c"}]}]), None),
        (body(messages=[USER, {**CALLED, "tool_calls": [{**CALL, "id": ""}]}]), None),
    ],
)
def test_malformed_tool_requests_are_400s_naming_the_parameter(
    payload: dict[str, Any], param: str | None
) -> None:
    error = refusal(payload)
    assert error.code == "invalid_value"
    if param is None:  # a detail of a tool or call: its path is named
        assert error.param is not None
        assert error.param.startswith(("tools[0].function", "messages[1].tool_calls[0]"))
    else:
        assert error.param == param


def test_the_messages_of_an_undeclared_tool_choice_and_of_a_stray_result_say_why() -> None:
    undeclared = body(tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert "get_time" in refusal(undeclared).message
    stray = refusal(body(messages=[USER, {**ANSWERED, "tool_call_id": "call_nobody"}]))
    assert "call_nobody" in stray.message and "messages[1]" in stray.message


def test_a_tool_round_trip_reaches_the_worker_whole(liv: Route) -> None:
    request = ChatCompletionRequest.parse(
        body(
            tools=[WEATHER, TIME],
            messages=[USER, CALLED, ANSWERED],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            parallel_tool_calls=False,
        )
    )
    request.check_supported(liv)
    sent = inference(request, liv)
    assert [tool.name for tool in sent.tools] == ["get_weather", "get_time"]
    weather, time = sent.tools
    assert weather.description == "Current weather of a city"
    assert json.loads(weather.parameters_json) == WEATHER["function"]["parameters"]
    assert time.parameters_json == "" and time.description == ""
    assert sent.tool_choice.mode == inference_pb2.ToolChoice.MODE_FUNCTION
    assert sent.tool_choice.function_name == "get_time"
    assert sent.single_tool_call
    called, answered = sent.messages[1], sent.messages[2]
    assert called.role == "assistant" and called.content == ""
    assert list(called.tool_calls) == [
        inference_pb2.ToolCall(id="call_abc", name="get_weather", arguments='{"city": "Berlin"}')
    ]
    assert answered.role == "tool" and answered.tool_call_id == "call_abc"
    assert answered.content == "Sunny, 21 °C"


@pytest.mark.parametrize(
    ("choice", "mode"),
    [
        (None, inference_pb2.ToolChoice.MODE_AUTO),
        ("auto", inference_pb2.ToolChoice.MODE_AUTO),
        ("none", inference_pb2.ToolChoice.MODE_NONE),
        ("required", inference_pb2.ToolChoice.MODE_REQUIRED),
    ],
)
def test_tool_choice_modes(liv: Route, choice: str | None, mode: int) -> None:
    extra = {} if choice is None else {"tool_choice": choice}
    sent = inference(ChatCompletionRequest.parse(body(**extra)), liv)
    assert sent.tool_choice.mode == mode
    assert list(sent.tools) and not sent.single_tool_call  # parallel calls by default


def test_a_request_without_tools_sends_none(liv: Route) -> None:
    sent = inference(
        ChatCompletionRequest.parse(
            {"model": "liv", "messages": [USER], "parallel_tool_calls": False}
        ),
        liv,
    )
    assert not sent.tools and not sent.HasField("tool_choice") and not sent.single_tool_call


def test_a_tool_result_may_come_as_text_parts(liv: Route) -> None:
    parts = {
        **ANSWERED,
        "content": [{"type": "text", "text": "Sunny"}, {"type": "text", "text": "!"}],
    }
    sent = inference(ChatCompletionRequest.parse(body(messages=[USER, CALLED, parts])), liv)
    assert sent.messages[2].content == "Sunny!"


def test_a_route_without_the_tools_capability_refuses_tools_naming_it(liv: Route) -> None:
    without = liv.model_copy(
        update={"capabilities": liv.capabilities.model_copy(update={"tools": False})}
    )
    for extra in ({}, {"tool_choice": "none"}):
        with pytest.raises(InvalidRequest) as caught:
            ChatCompletionRequest.parse(body(**extra)).check_supported(without)
        assert caught.value.param == "tools"
        assert caught.value.code == "unsupported_parameter"
        assert "capability 'tools'" in caught.value.message
    # A conversation that once used tools is fine without `tools` (the history is text).
    ChatCompletionRequest.parse(
        {"model": "liv", "messages": [USER, CALLED, ANSWERED]}
    ).check_supported(without)


def test_a_route_that_does_not_list_tool_choice_refuses_it(liv: Route) -> None:
    without = liv.model_copy(
        update={"supported_parameters": [p for p in liv.supported_parameters if p != "tool_choice"]}
    )
    ChatCompletionRequest.parse(body()).check_supported(without)
    with pytest.raises(InvalidRequest) as caught:
        ChatCompletionRequest.parse(body(tool_choice="required")).check_supported(without)
    assert caught.value.param == "tool_choice"


def test_the_prompt_bound_covers_the_tools_as_the_worker_writes_them(liv: Route) -> None:
    """The hold's prompt bound (a token covers at least one byte) is at least the bytes of the
    prompt text the worker writes: tools section, call blocks, wrapped tool results."""
    accented: dict[str, Any] = {
        "type": "function",
        "function": {
            "name": "wetter",
            "description": "Das Wetter in einer Stadt, größer oder kleiner",
            "parameters": {"type": "object", "properties": {"stadt": {"type": "string"}}},
        },
    }
    # Compact arguments that the worker writes spaced; a number it writes longer (1e5).
    terse = {**CALL, "function": {"name": "wetter", "arguments": '{"stadt":"Zürich","n":1e5}'}}
    not_json = {**CALL, "id": "call_2", "function": {"name": "get_weather", "arguments": "?"}}
    request = ChatCompletionRequest.parse(
        body(
            tools=[WEATHER, TIME, accented],
            tool_choice={"type": "function", "function": {"name": "wetter"}},
            messages=[
                USER,
                {"role": "assistant", "content": "Let me look.", "tool_calls": [terse, not_json]},
                {**ANSWERED, "name": "wetter"},
                {**ANSWERED, "tool_call_id": "call_2", "content": "Rain"},
            ],
        )
    )
    generation = generation_request(inference(request, liv))
    written = [markup.tools_section(generation)]
    for message in generation.messages:
        if message.role == "assistant":
            written.append(markup.assistant_text(message))
        elif message.role == "tool":
            written.append(markup.tool_response(message.content, message.name))
        else:
            written.append(message.content)
    assert request.prompt_token_bound() >= sum(len(text.encode()) for text in written)
    # Without tools, the bound is the text's: tools are not charged where there are none.
    plain = ChatCompletionRequest.parse({"model": "liv", "messages": [USER]})
    assert plain.prompt_token_bound() < len(written[0].encode())
