"""Log-probabilities and logit bias on a row of logits (numpy, float32), the bookkeeping that
sends each token's log-probability with the text it produced, and how both cross the worker's
protocol, the scripted engine and the OpenAI proxy engine."""

from __future__ import annotations

import json
import math

import numpy
import pytest
from numpy.typing import NDArray

from regio.inference.v1 import inference_pb2
from regio_common.errors import INVALID_LOGIT_BIAS
from regio_worker.engine.base import (
    ChatMessage,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    TopLogprob,
)
from regio_worker.engine.logprobs import (
    LogitBias,
    LogprobTracker,
    LogSoftmax,
    token_logprob,
    top_tokens,
)
from regio_worker.engine.openai_proxy import (
    SseEvent,
    chat_completion_body,
    parse_event,
    upstream_error,
)
from regio_worker.engine.scripted import SCRIPTED_LOGPROB, ScriptedEngine
from regio_worker.protocol import delta_chunk, generation_request

VOCABULARY = 262_144  # Gemma 3's


def logits_row(seed: int = 7) -> NDArray[numpy.float32]:
    return (numpy.random.default_rng(seed).standard_normal(VOCABULARY) * 4).astype(numpy.float32)


def reference_log_softmax(logits: NDArray[numpy.float32]) -> NDArray[numpy.float64]:
    wide = logits.astype(numpy.float64)
    result: NDArray[numpy.float64] = wide - (
        wide.max() + numpy.log(numpy.exp(wide - wide.max()).sum())
    )
    return result


def token_bytes(token: int) -> bytes:
    return f"<{token}>".encode()


def test_log_softmax_in_float32_matches_a_float64_reference() -> None:
    logits = logits_row()
    expected = reference_log_softmax(logits)
    logprobs = LogSoftmax(logits)
    for token in (0, 1, 12345, VOCABULARY - 1, int(logits.argmax())):
        assert logprobs[token] == pytest.approx(expected[token], abs=1e-4)
    assert math.isclose(numpy.exp(expected).sum(), 1.0)


def test_log_softmax_is_stable_and_precise_for_huge_logits() -> None:
    logits = numpy.array([1000.0, 999.0, -1000.0], dtype=numpy.float32)
    logprobs = LogSoftmax(logits)
    assert logprobs[0] == pytest.approx(-math.log1p(math.exp(-1)), abs=1e-6)
    assert logprobs[1] == pytest.approx(-1 - math.log1p(math.exp(-1)), abs=1e-6)
    assert math.isfinite(logprobs[2]) and logprobs[2] < -1999


def test_top_tokens_are_the_most_likely_in_order() -> None:
    logits = logits_row()
    expected = [int(token) for token in numpy.argsort(-logits, kind="stable")[:20]]
    assert top_tokens(logits, 20) == expected
    assert top_tokens(logits, 1) == [int(logits.argmax())]
    assert top_tokens(logits, 0) == []
    tied = numpy.array([1.0, 3.0, 3.0, 2.0], dtype=numpy.float32)
    assert top_tokens(tied, 3) == [1, 2, 3]  # ties: lower id first
    assert top_tokens(tied, 10) == [1, 2, 3, 0]  # never more than the vocabulary


def test_token_logprob_of_the_argmax_is_the_first_of_its_top_logprobs() -> None:
    logits = logits_row()
    best = int(logits.argmax())
    entry = token_logprob(logits, best, 5, token_bytes)
    assert entry.token == token_bytes(best)
    assert [top.token for top in entry.top_logprobs] == [
        token_bytes(token) for token in top_tokens(logits, 5)
    ]
    assert (
        entry.logprob
        == entry.top_logprobs[0].logprob
        == max(top.logprob for top in entry.top_logprobs)
    )
    logprobs = [top.logprob for top in entry.top_logprobs]
    assert logprobs == sorted(logprobs, reverse=True)
    assert all(logprob <= 0 for logprob in logprobs)
    assert sum(math.exp(logprob) for logprob in logprobs) <= 1.0
    assert token_logprob(logits, 3, 0, token_bytes).top_logprobs == ()


def test_logit_bias_applies_to_a_copy() -> None:
    logits = numpy.zeros(8, dtype=numpy.float32)
    biased = LogitBias([(2, 100.0), (5, -100.0)]).apply(logits)
    assert biased.tolist() == [0, 0, 100, 0, 0, -100, 0, 0]
    assert not logits.any()  # llama.cpp's buffer is left alone
    assert int(biased.argmax()) == 2


def entry(text: str, logprob: float = -1.0) -> TokenLogprob:
    return TokenLogprob(text.encode(), logprob)


def sample(tracker: LogprobTracker, text: str) -> TokenLogprob:
    tracker.drawn = entry(text)
    tracker.sampled()
    return entry(text)


def test_each_token_goes_out_with_the_text_it_produced() -> None:
    tracker = LogprobTracker(top_n=0)
    hello = sample(tracker, "Hello")
    assert tracker.take("Hello") == (hello,)
    world = sample(tracker, " world")
    assert tracker.take(" world") == (world,)
    assert tracker.take("", end=True) == ()


def test_a_character_split_over_tokens_goes_out_with_the_text_that_completes_it() -> None:
    euro = "€".encode()
    tracker = LogprobTracker(top_n=0)
    tracker.drawn = TokenLogprob(euro[:1], -1.0)
    tracker.sampled()
    assert tracker.take("") == ()  # the detokenizer holds the incomplete character back
    tracker.drawn = TokenLogprob(euro[1:], -2.0)
    tracker.sampled()
    taken = tracker.take("€")
    assert [item.token for item in taken] == [euro[:1], euro[1:]]
    assert b"".join(item.token for item in taken) == euro


def test_text_held_for_a_stop_string_keeps_its_tokens_until_it_goes_out() -> None:
    tracker = LogprobTracker(top_n=0)
    # Stop string "ab": "a" is held back until "c" shows it was no stop.
    first = sample(tracker, "x")
    assert tracker.take("x") == (first,)
    held = sample(tracker, "a")
    assert tracker.take("") == ()
    after = sample(tracker, "c")
    assert tracker.take("ac") == (held, after)


def test_tokens_of_a_stop_string_are_not_reported() -> None:
    tracker = LogprobTracker(top_n=0)
    kept = sample(tracker, "yes")
    assert tracker.take("yes") == (kept,)
    partly = sample(tracker, " n")  # stop string "no": " " goes out, "n" is held
    assert tracker.take(" ") == (partly,)
    sample(tracker, "o")
    assert tracker.take("") == ()  # the stop string is complete: nothing more goes out


def test_at_the_end_every_token_left_goes_out_even_without_text() -> None:
    tracker = LogprobTracker(top_n=0)
    text = sample(tracker, "hi")
    silent = sample(tracker, "")  # a token without text (a control token)
    assert tracker.take("hi") == (text, silent)
    trailing = sample(tracker, "")
    assert tracker.take("", end=True) == (trailing,)


def request(**fields: object) -> GenerationRequest:
    return GenerationRequest(
        transaction_id="t",
        messages=(ChatMessage("user", "hi"),),
        **fields,  # type: ignore[arg-type]
    )


def test_the_protocol_carries_logprobs_and_logit_bias() -> None:
    sampling = inference_pb2.SamplingParams(logprobs=True, top_logprobs=4)
    sampling.logit_bias[9] = -100
    sampling.logit_bias[3] = 2.5
    proto = inference_pb2.InferenceRequest(transaction_id="t", sampling=sampling)
    generation = generation_request(proto)
    assert generation.top_logprobs == 4 and generation.logprobs
    assert generation.logit_bias == ((3, 2.5), (9, -100.0))
    plain = generation_request(inference_pb2.InferenceRequest(transaction_id="t"))
    assert plain.top_logprobs is None and not plain.logprobs and plain.logit_bias == ()
    # top_logprobs without logprobs asks for nothing (the gateway refuses it anyway).
    ignored = inference_pb2.SamplingParams(top_logprobs=3)
    assert generation_request(inference_pb2.InferenceRequest(sampling=ignored)).top_logprobs is None

    token = TokenLogprob(b"\xe2\x82", -0.5, (TopLogprob(b"\xe2\x82", -0.5), TopLogprob(b"a", -2)))
    chunk = delta_chunk("t", 3, "", logprobs=(token,))
    [sent] = chunk.logprobs
    assert sent.token == b"\xe2\x82" and sent.logprob == -0.5
    assert [(top.token, top.logprob) for top in sent.top_logprobs] == [
        (b"\xe2\x82", -0.5),
        (b"a", -2.0),
    ]
    assert not delta_chunk("t", 4, "x").logprobs


async def test_the_scripted_engine_reports_a_logprob_per_piece() -> None:
    engine = ScriptedEngine(["a", "b"])
    events = [event async for event in engine.generate(request(top_logprobs=3))]
    deltas = [event for event in events if isinstance(event, TextDelta)]
    assert [delta.text for delta in deltas] == ["a", "b"]
    first = deltas[0].logprobs[0]
    assert first.token == b"a" and first.logprob == SCRIPTED_LOGPROB
    assert [top.token for top in first.top_logprobs] == [b"a", b" alt1", b" alt2"]
    plain = [event async for event in engine.generate(request())]
    assert all(not event.logprobs for event in plain if isinstance(event, TextDelta))


def test_the_proxy_forwards_the_parameters_upstream() -> None:
    body = chat_completion_body(request(top_logprobs=2, logit_bias=((5, -100.0), (7, 3.0))), "m")
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert body["logit_bias"] == {"5": -100.0, "7": 3.0}
    plain = chat_completion_body(request(), "m")
    assert not {"logprobs", "top_logprobs", "logit_bias"} & set(plain)


def test_the_proxy_maps_the_upstreams_logprobs_back() -> None:
    payload = {
        "choices": [
            {
                "index": 0,
                "delta": {"content": "Hi"},
                "logprobs": {
                    "content": [
                        {
                            "token": "Hi",
                            "logprob": -0.5,
                            "bytes": [72, 105],
                            "top_logprobs": [
                                {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                                {"token": "Yo", "logprob": -1.0, "bytes": None},
                                {"token": 3},  # unreadable: left out
                            ],
                        },
                        {"token": "!", "logprob": -2, "top_logprobs": 7},  # no bytes: UTF-8
                        "junk",
                    ]
                },
            }
        ]
    }
    chunk = parse_event(SseEvent("message", json.dumps(payload)))
    assert chunk.text == "Hi"
    assert chunk.logprobs == (
        TokenLogprob(b"Hi", -0.5, (TopLogprob(b"Hi", -0.5), TopLogprob(b"Yo", -1.0))),
        TokenLogprob(b"!", -2.0),
    )
    without = {"choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None}]}
    assert parse_event(SseEvent("message", json.dumps(without))).logprobs == ()


def test_an_upstream_refusing_logit_bias_is_the_clients_error() -> None:
    refused = upstream_error(400, '{"error": {"message": "logit_bias: token 999999 is invalid"}}')
    assert refused.code == INVALID_LOGIT_BIAS
    assert upstream_error(500, "logit_bias").code != INVALID_LOGIT_BIAS
