"""The OpenAI proxy engine's pure parts: request mapping, SSE decoding, chunk parsing, finish
reasons, error classification and the free-prompt usage rule."""

from __future__ import annotations

import pytest

from regio_common.errors import CONTEXT_LENGTH_EXCEEDED, GENERATION_FAILED
from regio_worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
    Usage,
)
from regio_worker.engine.openai_proxy import (
    SYSTEM_MESSAGE_OVERHEAD_TOKENS,
    SseDecoder,
    SseEvent,
    StreamChunk,
    UpstreamError,
    UpstreamToolCall,
    UpstreamUsage,
    chat_completion_body,
    free_prompt_byte_bound,
    map_finish_reason,
    parse_completion,
    parse_event,
    settle_usage,
    tokenize_url,
    upstream_error,
)


def decode(lines: list[str]) -> list[SseEvent]:
    decoder = SseDecoder()
    events = [event for line in lines if (event := decoder.feed(line)) is not None]
    last = decoder.flush()
    return [*events, last] if last is not None else events


def test_body_prepends_the_free_prompt_and_passes_only_the_set_sampling_fields() -> None:
    request = GenerationRequest(
        transaction_id="t",
        messages=(ChatMessage("developer", "Be brief."), ChatMessage("user", "Hi")),
        free_system_prompt="You are Regio.",
        max_tokens=12,
        temperature=0.0,
        stop=("END", "\n\n"),
        seed=7,
        frequency_penalty=0.5,
    )
    body = chat_completion_body(request, "qwen")
    assert body == {
        "model": "qwen",
        "messages": [
            {"role": "system", "content": "You are Regio."},
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 12,
        "temperature": 0.0,
        "seed": 7,
        "frequency_penalty": 0.5,
        "stop": ["END", "\n\n"],
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_body_without_free_prompt_model_or_sampling() -> None:
    body = chat_completion_body(
        GenerationRequest(transaction_id="t", messages=(ChatMessage("user", "Hi"),)), None
    )
    assert body == {
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_a_client_that_does_not_stream_gets_one_json_answer_from_the_upstream() -> None:
    request = GenerationRequest(
        transaction_id="t", messages=(ChatMessage("user", "Hi"),), stream=False
    )
    body = chat_completion_body(request, None)
    assert body["stream"] is False
    assert "stream_options" not in body  # OpenAI refuses stream_options without stream


def test_parse_completion_text_finish_and_usage() -> None:
    answer = (
        b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"The sea is wide."},"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":30,"completion_tokens":5,"prompt_tokens_details":'
        b'{"cached_tokens":16},"completion_tokens_details":{"reasoning_tokens":0}}}'
    )
    assert parse_completion(answer) == StreamChunk(
        text="The sea is wide.",
        finish_reason="length",
        usage=UpstreamUsage(30, 5, cached_tokens=16),
    )
    # A whole answer without a finish reason ended normally; one without usage says none.
    bare = b'{"choices":[{"message":{"content":"ok"}}]}'
    assert parse_completion(bare) == StreamChunk(text="ok", finish_reason="stop")


def test_parse_completion_reasoning_tool_calls_in_order_and_logprobs() -> None:
    answer = b"""{"choices":[{"index":0,"finish_reason":"tool_calls",
      "message":{"role":"assistant","content":null,"reasoning_content":"Rome first.",
        "tool_calls":[
          {"id":"call_a","type":"function","function":{"name":"weather","arguments":"{}"}},
          {"type":"function","function":{"name":"time","arguments":{"tz":"CET"}}}]},
      "logprobs":{"content":[{"token":"x","logprob":-0.5,"bytes":[120],"top_logprobs":[]}]}}],
      "usage":{"prompt_tokens":9,"completion_tokens":7}}"""
    chunk = parse_completion(answer)
    assert chunk.reasoning == "Rome first."
    assert chunk.text == ""
    # Calls of a whole answer carry no index: their order numbers them.
    assert chunk.tool_calls == (
        UpstreamToolCall(index=0, id="call_a", name="weather", arguments="{}"),
        UpstreamToolCall(index=1, id="", name="time", arguments='{"tz": "CET"}'),
    )
    assert chunk.logprobs == (TokenLogprob(b"x", -0.5, ()),)
    assert (chunk.finish_reason, chunk.usage) == ("tool_calls", UpstreamUsage(9, 7))
    vllm = b'{"choices":[{"message":{"content":"4","reasoning":"2+2"},"finish_reason":"stop"}]}'
    assert parse_completion(vllm).reasoning == "2+2"


def test_parse_completion_rejects_garbage_and_maps_error_answers() -> None:
    for garbage in (b"not json", b"[1, 2]", b'{"choices": []}', b'{"choices": ["x"]}'):
        with pytest.raises(UpstreamError) as unreadable:
            parse_completion(garbage)
        assert unreadable.value.code == GENERATION_FAILED
    context = b'{"error":{"message":"the request exceeds the available context size",'
    context += b'"type":"exceed_context_size_error","code":400}}'
    with pytest.raises(UpstreamError) as too_long:
        parse_completion(context)
    assert too_long.value.code == CONTEXT_LENGTH_EXCEEDED


def test_sse_decoder_joins_data_lines_skips_comments_and_flushes_the_last_event() -> None:
    events = decode(
        [
            ": keep-alive",
            'data: {"a":',
            "data: 1}",
            "",
            "event: ping",
            "id: 3",
            "data:x",
            "",
            "",
            "data: [DONE]",
        ]
    )
    assert events == [
        SseEvent("message", '{"a":\n1}'),
        SseEvent("ping", "x"),
        SseEvent("message", "[DONE]"),
    ]


def test_sse_decoder_reads_llama_server_error_lines() -> None:
    assert decode(['error: {"message": "boom"}', ""]) == [SseEvent("error", '{"message": "boom"}')]


def test_parse_event_text_finish_usage_and_done() -> None:
    text = '{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}'
    assert parse_event(SseEvent("message", text)) == StreamChunk(text="Hel")
    finish = '{"choices":[{"delta":{},"finish_reason":"length"}],"usage":null}'
    assert parse_event(SseEvent("message", finish)) == StreamChunk(finish_reason="length")
    usage = (
        '{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":5,'
        '"prompt_tokens_details":{"cached_tokens":16}}}'
    )
    assert parse_event(SseEvent("message", usage)) == StreamChunk(
        usage=UpstreamUsage(30, 5, cached_tokens=16)
    )
    assert parse_event(SseEvent("message", "[DONE]")) == StreamChunk(done=True)
    role_only = '{"choices":[{"delta":{"role":"assistant","content":null}}]}'
    assert parse_event(SseEvent("message", role_only)) == StreamChunk()


def test_parse_event_rejects_garbage_and_maps_error_events() -> None:
    with pytest.raises(UpstreamError) as garbage:
        parse_event(SseEvent("message", "not json"))
    assert garbage.value.code == GENERATION_FAILED
    context = '{"error":{"message":"the request exceeds the available context size",'
    context += '"type":"exceed_context_size_error","code":400}}'
    with pytest.raises(UpstreamError) as too_long:
        parse_event(SseEvent("message", context))
    assert too_long.value.code == CONTEXT_LENGTH_EXCEEDED
    with pytest.raises(UpstreamError) as failed:
        parse_event(SseEvent("error", '{"message":"CUDA out of memory"}'))
    assert failed.value.code == GENERATION_FAILED
    assert "CUDA" not in failed.value.message


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("eos", FinishReason.STOP),
        ("tool_calls", FinishReason.TOOL_CALLS),
        ("function_call", FinishReason.TOOL_CALLS),
        ("content_filter", FinishReason.STOP),
    ],
)
def test_finish_reasons(upstream: str, expected: FinishReason) -> None:
    assert map_finish_reason(upstream) is expected


def test_http_errors_are_classified_without_the_upstreams_text() -> None:
    vllm = (
        '{"object":"error","message":"This model\'s maximum context length is 2048 tokens. '
        'However, you requested 5000 tokens","type":"BadRequestError","code":400}'
    )
    error = upstream_error(400, vllm)
    assert error.code == CONTEXT_LENGTH_EXCEEDED
    assert "2048" not in error.message
    other = upstream_error(401, '{"error":"invalid api key sk-secret-123 for http://10.0.0.5"}')
    assert other.code == GENERATION_FAILED
    assert other.message == "The model server failed (HTTP 401)."
    # A server error that mentions the context is still our failure, not the client's.
    assert upstream_error(500, "context length bookkeeping broke").code == GENERATION_FAILED


def test_usage_subtracts_the_free_prompt_upper_bound() -> None:
    upstream = UpstreamUsage(prompt_tokens=100, completion_tokens=7, cached_tokens=40)
    usage = settle_usage(upstream, free_text_tokens=12, has_free_prompt=True, deltas=6)
    free = 12 + SYSTEM_MESSAGE_OVERHEAD_TOKENS
    assert usage == Usage(
        prompt_tokens=100 - free,
        completion_tokens=7,
        free_prompt_tokens=free,
        cached_tokens=40 - free,
    )


def test_usage_never_goes_negative_and_is_exact_without_free_prompt() -> None:
    tiny = settle_usage(UpstreamUsage(10, 1, 10), 500, has_free_prompt=True, deltas=1)
    assert tiny == Usage(prompt_tokens=0, completion_tokens=1, free_prompt_tokens=10)
    plain = settle_usage(UpstreamUsage(10, 3, 4), 0, has_free_prompt=False, deltas=3)
    assert plain == Usage(prompt_tokens=10, completion_tokens=3, cached_tokens=4)


def test_usage_without_a_usage_chunk_bills_only_the_deltas() -> None:
    assert settle_usage(None, 5, has_free_prompt=True, deltas=4) == Usage(completion_tokens=4)


def test_byte_bound_counts_utf8_bytes() -> None:
    assert free_prompt_byte_bound("Grüß") == 6


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/tokenize"),
        ("http://h:8080/v1/", "http://h:8080/tokenize"),
        ("https://h/api", "https://h/api/tokenize"),
    ],
)
def test_tokenize_url(base: str, expected: str) -> None:
    assert tokenize_url(base) == expected
