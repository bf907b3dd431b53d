"""What a client of the gateway sees of its key's and account's limits: 429s with OpenAI's
envelope, Retry-After and x-ratelimit-* headers, headers on served answers, no fallback retry,
and refusals repeated by the gateway without asking billing again."""

from __future__ import annotations

import json

import aiohttp

from regio.billing.v1 import billing_pb2
from regio_common.config_records import UsageLimits
from tests.unit.gateway.fake_gateway import (
    OTHER_KEY,
    bearer,
    chat_body,
    held,
    limited,
    running_gateway,
)

RPM = billing_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE
HEADROOM = billing_pb2.RateLimitHeadroom(
    limit_requests=10,
    remaining_requests=7,
    reset_requests_ms=42_000,
    limit_tokens=5000,
    remaining_tokens=4000,
    reset_tokens_ms=42_000,
)


async def test_reserve_carries_the_key_and_both_scopes_limits() -> None:
    key_limits = UsageLimits(requests_per_minute=10, daily_spend_cap_nano=10**9)
    account_limits = UsageLimits(tokens_per_minute=5000, max_concurrent_requests=4)
    async with (
        running_gateway(key_limits, account_limits) as gateway,
        aiohttp.ClientSession(gateway.url) as http,
        http.post("/v1/chat/completions", json=chat_body(), headers=bearer()) as r,
    ):
        assert r.status == 200
    (reserve,) = gateway.billing.reserves
    assert reserve.key_id == "key-1"
    assert reserve.key_limits == billing_pb2.UsageLimits(
        requests_per_minute=10, daily_spend_cap_nano=10**9
    )
    assert reserve.account_limits == billing_pb2.UsageLimits(
        tokens_per_minute=5000, max_concurrent_requests=4
    )


async def test_served_answers_carry_the_headroom_as_openai_headers() -> None:
    async with running_gateway() as gateway:
        gateway.billing.answers += [held(HEADROOM), held(HEADROOM), held()]
        async with aiohttp.ClientSession(gateway.url) as http:
            async with http.post("/v1/chat/completions", json=chat_body(), headers=bearer()) as r:
                assert r.status == 200
                assert r.headers["x-ratelimit-limit-requests"] == "10"
                assert r.headers["x-ratelimit-remaining-requests"] == "7"
                assert r.headers["x-ratelimit-reset-requests"] == "42s"
                assert r.headers["x-ratelimit-remaining-tokens"] == "4000"
            streamed = chat_body(stream=True)
            async with http.post("/v1/chat/completions", json=streamed, headers=bearer()) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                assert r.headers["x-ratelimit-remaining-requests"] == "7"
                assert (await r.text()).endswith("data: [DONE]\n\n")
            # No limit configured: no headers.
            async with http.post("/v1/chat/completions", json=chat_body(), headers=bearer()) as r:
                assert r.status == 200
                assert "x-ratelimit-limit-requests" not in r.headers


async def test_a_limit_refusal_is_a_429_and_is_not_retried_with_the_fallback_models() -> None:
    async with running_gateway(UsageLimits(requests_per_minute=10)) as gateway:
        gateway.billing.answers.append(limited(RPM, billing_pb2.LIMIT_SCOPE_KEY, 10, 10, 21_000))
        # The fallback names the same route by its base model: it would be held again.
        body = chat_body(models=["google/gemma-3-270m"])
        async with (
            aiohttp.ClientSession(gateway.url) as http,
            http.post("/v1/chat/completions", json=body, headers=bearer()) as r,
        ):
            assert r.status == 429
            envelope = await r.json()
            headers = r.headers
    assert envelope == {
        "error": {
            "message": "Rate limit reached for requests per minute (RPM) on this API key: "
            "limit 10, used 10. Please try again in 21s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert headers["Retry-After"] == "21"
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-transaction-id"].startswith("txn-")
    assert len(gateway.billing.reserves) == 1  # the fallbacks would meet the same limit
    # Offered while billing decided (the first refusal of the account), then cancelled unread.
    (offered,) = gateway.dispatcher.streams
    assert offered.cancelled.is_set()
    registry = gateway.metrics.registry
    reason = {"reason": "rate_limit_exceeded"}
    assert registry.get_sample_value("regio_gateway_refusals_total", reason) == 1


async def test_the_gateway_repeats_a_refusal_without_billing_until_the_window_resets() -> None:
    async with running_gateway(UsageLimits(requests_per_minute=10)) as gateway:
        gateway.billing.answers.append(limited(RPM, billing_pb2.LIMIT_SCOPE_KEY, 10, 10, 30_000))
        async with aiohttp.ClientSession(gateway.url) as http:
            for _ in range(3):
                async with http.post(
                    "/v1/chat/completions", json=chat_body(), headers=bearer()
                ) as r:
                    assert r.status == 429
                    assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
                    assert r.headers["x-ratelimit-remaining-requests"] == "0"
                    assert 1 <= int(r.headers["Retry-After"]) <= 30
            # The limit was the key's: another key of the account is still served.
            other = bearer(OTHER_KEY)
            async with http.post("/v1/chat/completions", json=chat_body(), headers=other) as r:
                assert r.status == 200
    assert len(gateway.billing.reserves) == 2  # the first refusal, then the other key


async def test_content_parts_and_tools_are_bounded() -> None:
    async with running_gateway(max_content_parts=3, max_tools=2) as gateway:
        parts = [{"type": "text", "text": "x"}] * 4
        too_many_parts = chat_body(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": parts},
            ]
        )
        too_many_tools = chat_body(
            tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(3)]
        )
        async with aiohttp.ClientSession(gateway.url) as http:
            for body, param in ((too_many_parts, "messages[1].content"), (too_many_tools, "tools")):
                data = json.dumps(body)
                async with http.post("/v1/chat/completions", data=data, headers=bearer()) as r:
                    assert r.status == 400
                    error = (await r.json())["error"]
                    assert (error["code"], error["param"]) == ("invalid_value", param)
            three_parts = chat_body(messages=[{"role": "user", "content": parts[:3]}])
            async with http.post("/v1/chat/completions", json=three_parts, headers=bearer()) as r:
                assert r.status == 200
    assert len(gateway.billing.reserves) == 1
