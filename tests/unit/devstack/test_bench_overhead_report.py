"""The bench-overhead report says which of the issue's targets a run met, next to the floor."""

from __future__ import annotations

from regio_devstack.bench_overhead import LEVELS, Run, targets_table


def run(target: str, stream: bool, concurrency: int, rps: float, latency: float) -> Run:
    """A run of `rps` requests per second, every request taking `latency` seconds."""
    count = 100
    return Run(
        target=target,
        stream=stream,
        concurrency=concurrency,
        count=count,
        elapsed=count / rps,
        latencies=[latency] * count,
        first_chunks=[latency] * count if stream else [],
        usages=[[12, 8]] * count,
        errors={},
    )


def runs(regio_c1_latency: float, regio_rps: float) -> list[Run]:
    made = []
    for stream in (False, True):
        for concurrency, _ in LEVELS:
            made += [
                run("direct", stream, concurrency, 10_000, 0.0001),
                run("floor", stream, concurrency, 1_000, 0.0015),
                run("LiteLLM", stream, concurrency, 100, 0.5),
                run(
                    "Regio",
                    stream,
                    concurrency,
                    regio_rps,
                    regio_c1_latency if concurrency == 1 else 0.05,
                ),
            ]
    return made


def test_each_target_is_met_or_missed_with_the_floors_figure() -> None:
    report = targets_table(runs(regio_c1_latency=0.0031, regio_rps=600))

    assert "json   c=1    added p50 <= 1.00 ms: 3.00 ms [1.40] MISSED" in report
    assert "json   c=1    added p99 <= 5.00 ms: 3.00 ms [1.40] met" in report
    assert "json   c=32   req/s >= 5x LiteLLM: x6.00 [x10.00] met; p99 50.00 < " in report
    assert report.count("MISSED") == 2  # the one-client p50, JSON and streamed


def test_too_few_requests_per_second_miss_the_throughput_target() -> None:
    report = targets_table(runs(regio_c1_latency=0.0005, regio_rps=400))

    assert "c=128  req/s >= 5x LiteLLM: x4.00 [x10.00] MISSED" in report
    assert "added p50 <= 1.00 ms: 0.40 ms [1.40] met" in report
