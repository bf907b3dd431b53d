"""The bench's floor (Regio's hops with no Regio code) really makes each hop: every request
crosses the floor's gateway, a hold committed in PostgreSQL over gRPC, and a worker behind
NATS that calls the upstream, and answers whole, JSON or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from aiohttp import web

from regio_devstack.bench_floor import start_floor
from regio_devstack.bench_load import PIECES, PROMPT_TOKENS, run_load, upstream_app
from regio_devstack.processes import free_port


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    runner = web.AppRunner(upstream_app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1/chat/completions"
    await runner.cleanup()


async def test_each_request_crosses_every_hop_and_answers_whole(
    upstream_url: str, fresh_database_url: str, tmp_path: Path
) -> None:
    floor = start_floor(tmp_path, fresh_database_url, upstream_url)
    try:
        for stream in (False, True):
            result = await run_load(floor.url, "sk-any", "bench", stream, concurrency=4, count=40)

            assert result["errors"] == {}
            assert result["usages"] == [[PROMPT_TOKENS, len(PIECES)]] * 40
            assert len(result["first_chunks"]) == (40 if stream else 0)
    finally:
        floor.stop()
    with psycopg.connect(fresh_database_url) as conn:
        row = conn.execute("SELECT count(*) FROM bench_floor_hold").fetchone()
    assert row == (80,)  # one committed hold per request
