"""`make bench-overhead`: what the routing layer adds in front of an OpenAI-compatible server.

Four targets, measured side by side in one run with the same load client (`bench_load load`,
its own process) at concurrency 1, 32 and 128, non-streaming and streaming:

(a) direct   a constant-answer upstream (`bench_load upstream`, its own process);
(f) floor    Regio's hops with nothing in them (`bench_floor`): HTTP server -> one gRPC call that
             inserts a row in PostgreSQL, alongside a NATS request to a process that calls the
             upstream. No Regio code: the least any design on these parts can add;
(b) LiteLLM  LiteLLM's proxy in front of it (own virtualenv under .regio/bench/, no database);
(c) Regio    the whole stack: gateway (key check) -> billing hold in PostgreSQL → NATS → a worker
             with the `openai_proxy` engine fronting the upstream -> JetStream settlement.

Afterwards the demo account's balance (dashboard API) must have gone down by exactly the sum of
the usage every Regio answer reported x the route's prices: each request charged once."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regio_common.catalogue import Catalogue
from regio_common.logging import configure_logging
from regio_common.money import request_cost_nano
from regio_common.settings import DEFAULT_CATALOGUE, PROJECT_ROOT
from regio_devstack.bench_floor import Floor, start_floor
from regio_devstack.processes import ManagedProcess, free_port, port_open
from regio_devstack.stack import Stack, StackConfig

ROUTE = "liv"
COUNTRY = "de"
LEVELS = [(1, 200), (32, 2000), (128, 2000)]  # (concurrency, measured requests)
# LiteLLM's release 1.107.0 was compromised (supply-chain attack); never install it.
LITELLM_REQUIREMENT = "litellm[proxy]>=1.100,!=1.107.*"
LITELLM_VENV = PROJECT_ROOT / ".regio" / "bench" / "litellm-venv"
LITELLM_MASTER_KEY = "sk-bench-master"
# LiteLLM's proxy serves with one process per core, as its users run it on a machine of their
# own (the reference figures are of 2 workers on this 2-core machine): with one worker
# it would use a single core and serve about half as many requests.
LITELLM_WORKERS = os.cpu_count() or 1
# The worker's limits, raised so that they never cap 128 clients (defaults: 4 and 16).
WORKER_ENV = {"REGIO_UPSTREAM_MAX_CONCURRENCY": "256", "REGIO_WORKER_QUEUE_LIMIT": "256"}
# The load client is one address standing for 128 users: the gateway's per-address cap on
# requests in flight (default 64; LiteLLM has none) is raised to let them all in.
GATEWAY_ENV = {"REGIO_MAX_CONCURRENT_REQUESTS_PER_CLIENT": "256"}
TARGETS = ["direct", "floor", "LiteLLM", "Regio"]


@dataclass
class Run:
    target: str
    stream: bool
    concurrency: int
    count: int
    elapsed: float
    latencies: list[float]
    first_chunks: list[float]
    usages: list[list[int]]
    errors: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process, this run

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# -- processes --------------------------------------------------------------------------------
def ensure_litellm(say: Any) -> Path:
    """LiteLLM's proxy in its own virtualenv, created on the first run and reused afterwards."""
    binary = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / ".installed"
    if binary.exists() and stamp.exists():
        return binary
    say(f"installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (first run only) ...")
    LITELLM_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", LITELLM_REQUIREMENT],
        check=True,
    )
    stamp.touch()
    return binary


def litellm_version() -> str:
    out = subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m;print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"


def start_litellm(folder: Path, upstream_url: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    config = folder / "litellm.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "model_list": [
                    {
                        "model_name": "bench",
                        "litellm_params": {
                            "model": "openai/bench",
                            "api_base": upstream_url,
                            "api_key": "sk-upstream",
                        },
                    }
                ],
                "litellm_settings": {"drop_params": True, "telemetry": False},
                "general_settings": {"master_key": LITELLM_MASTER_KEY},
            }
        )
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL",) and not key.startswith("REGIO_")
    }
    env.update(
        {
            "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at start
            "DISABLE_SCHEMA_UPDATE": "True",
        }
    )
    process = ManagedProcess(
        "litellm",
        [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(LITELLM_WORKERS),
        ],
        folder / "logs" / "litellm.log",
        env=env,
    ).start()
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: _get_ok(url + "/health/liveliness"), 180, "readiness")
    return process, url + "/v1/chat/completions"


def _get_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=2) as response:
        return bool(response.status == 200)


def process_tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of `root` and all its descendants, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total = 0.0
    for pid, seconds in cpu.items():
        walk = pid
        while walk > 1 and walk != root:
            walk = parents.get(walk, 0)
        if walk == root:
            total += seconds
    return total


def _cpu(pids: list[int]) -> float:
    return sum(process_tree_cpu(pid) for pid in pids)


# -- measuring --------------------------------------------------------------------------------
def load(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "regio_devstack.bench_load", "load", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def measure(
    target: str,
    url: str,
    key: str,
    model: str,
    stream: bool,
    concurrency: int,
    count: int,
    pids: dict[str, list[int]],
) -> tuple[Run, Run]:
    """A warm-up (2 x concurrency requests, at least 20), then the measured run."""
    spec = {"url": url, "api_key": key, "model": model, "stream": stream}
    warm = load({**spec, "concurrency": concurrency, "count": max(20, 2 * concurrency)})
    before = {name: _cpu(group) for name, group in pids.items()}
    client = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = load({**spec, "concurrency": concurrency, "count": count})
    cpu = {name: _cpu(group) - before[name] for name, group in pids.items()}
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["client"] = done.ru_utime + done.ru_stime - client.ru_utime - client.ru_stime
    warm_run = Run(target, stream, concurrency, max(20, 2 * concurrency), **warm)
    return warm_run, Run(target, stream, concurrency, count, cpu=cpu, **result)


# -- report -----------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def table(runs: list[Run], stream: bool) -> str:
    title = "streaming (SSE, 8 content chunks + usage)" if stream else "non-streaming (JSON)"
    head = (
        f"{'c':>4} {'target':<8}{'ok':>6}{'err':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'+p50 ms':>9}{'+p99 ms':>9}"
    )
    if stream:
        head += f"{'ttfc p50':>10}{'+ttfc p50':>10}{'+ttfc p99':>10}"
    lines = [f"== {title} ==", head, "-" * len(head)]
    for concurrency, _ in LEVELS:
        level = {r.target: r for r in runs if r.stream == stream and r.concurrency == concurrency}
        base = level["direct"]
        for target in TARGETS:
            run = level[target]
            p50, p99 = percentile(run.latencies, 50), percentile(run.latencies, 99)
            line = (
                f"{concurrency:>4} {target:<8}{run.ok:>6}{sum(run.errors.values()):>5}"
                f"{run.rps:>9.0f}{ms(p50):>9}{ms(p99):>9}"
            )
            if target == "direct":
                line += f"{'':>9}{'':>9}"
            else:
                line += (
                    f"{ms(p50 - percentile(base.latencies, 50)):>9}"
                    f"{ms(p99 - percentile(base.latencies, 99)):>9}"
                )
            if stream:
                f50, f99 = percentile(run.first_chunks, 50), percentile(run.first_chunks, 99)
                line += f"{ms(f50):>10}"
                if target != "direct":
                    line += (
                        f"{ms(f50 - percentile(base.first_chunks, 50)):>10}"
                        f"{ms(f99 - percentile(base.first_chunks, 99)):>10}"
                    )
            lines.append(line)
        for reference in ("LiteLLM", "floor"):
            lines.append(_ratios(level["Regio"], level[reference], base))
        for run in level.values():
            if run.errors:
                lines.append(f"{'':>4} errors of {run.target}: {run.errors}")
    return "\n".join(lines)


def _ratios(ours: Run, other: Run, base: Run) -> str:
    """Regio against another target of the same level (`base`: the upstream alone)."""

    def added(run: Run, q: float) -> float:
        return percentile(run.latencies, q) - percentile(base.latencies, q)

    def times(mine: float, theirs: float) -> str:
        return f"x{mine / theirs:.2f}" if theirs > 0 else "x?"

    return (
        f"{'':>4} Regio/{other.target}: req/s {times(ours.rps, other.rps)}, p50 latency "
        f"{times(percentile(ours.latencies, 50), percentile(other.latencies, 50))}, "
        f"p99 latency {times(percentile(ours.latencies, 99), percentile(other.latencies, 99))}, "
        f"added p50 {times(added(ours, 50), added(other, 50))}"
    )


# The targets: one client's added latency, and at many clients a multiple of LiteLLM's
# requests/s with a lower p99 (errors and the ledger are checked separately).
ADDED_P50_TARGET_SECONDS = 0.001
ADDED_P99_TARGET_SECONDS = 0.005
THROUGHPUT_TARGET = 5.0


def targets_table(runs: list[Run]) -> str:
    """Each target, met or missed, next to what the floor (no Regio code) achieves."""
    lines = ["== targets (Regio; in brackets the floor, Regio's hops with no Regio code) =="]

    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    for stream in (False, True):
        kind = "stream" if stream else "json"
        by_level = {(run.concurrency, run.target): run for run in runs if run.stream == stream}
        one = LEVELS[0][0]
        base = by_level[(one, "direct")]
        for q, target in ((50, ADDED_P50_TARGET_SECONDS), (99, ADDED_P99_TARGET_SECONDS)):
            added = {
                name: percentile(by_level[(one, name)].latencies, q) - percentile(base.latencies, q)
                for name in ("Regio", "floor")
            }
            lines.append(
                f"{kind:<6} c={one:<4} added p{q} <= {ms(target)} ms: {ms(added['Regio'])} ms "
                f"[{ms(added['floor'])}] {verdict(added['Regio'] <= target)}"
            )
        for concurrency, _ in LEVELS[1:]:
            ours, lite = by_level[(concurrency, "Regio")], by_level[(concurrency, "LiteLLM")]
            floor = by_level[(concurrency, "floor")]
            ratio = ours.rps / lite.rps if lite.rps else float("inf")
            ours_p99, lite_p99 = percentile(ours.latencies, 99), percentile(lite.latencies, 99)
            lines.append(
                f"{kind:<6} c={concurrency:<4} req/s >= {THROUGHPUT_TARGET:.0f}x LiteLLM: "
                f"x{ratio:.2f} [x{floor.rps / lite.rps if lite.rps else float('inf'):.2f}] "
                f"{verdict(ratio >= THROUGHPUT_TARGET)}; p99 {ms(ours_p99)} < LiteLLM's "
                f"{ms(lite_p99)} ms {verdict(ours_p99 < lite_p99)}"
            )
    return "\n".join(lines)


def cpu_table(runs: list[Run]) -> str:
    """CPU milliseconds per measured request, per process, for the c=128 runs."""
    names = sorted({name for run in runs for name in run.cpu})
    head = f"{'run':<22}" + "".join(f"{name:>11}" for name in names)
    lines = ["== CPU ms per request at c=128 (whole process trees, /proc) ==", head]
    for run in runs:
        if run.concurrency != LEVELS[-1][0] or not run.ok:
            continue
        label = f"{run.target} {'stream' if run.stream else 'json'}"
        lines.append(
            f"{label:<22}"
            + "".join(f"{run.cpu.get(name, 0.0) * 1000 / run.ok:>11.2f}" for name in names)
        )
    return "\n".join(lines)


def wait_settled(stack: Stack, account_id: str, timeout: float = 120) -> dict[str, Any]:
    """The balance once nothing is held and it has stopped moving (settlement is async)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        balance: dict[str, Any] = stack.admin("GET", f"/admin/v1/accounts/{account_id}/balance")
        if balance["held_nano"] == 0 and balance == last:
            return balance
        last = balance
        time.sleep(1.0)
    return last


def main() -> None:
    configure_logging("bench", "warning", "console")
    started = time.monotonic()
    say = print
    ensure_litellm(say)
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    route = catalogue.routes[ROUTE]
    runs: list[Run] = []
    warm_runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="regio-bench-overhead-") as name:
        folder = Path(name)
        upstream_port = free_port()
        upstream = ManagedProcess(
            "upstream",
            [
                sys.executable,
                "-m",
                "regio_devstack.bench_load",
                "upstream",
                "--port",
                str(upstream_port),
            ],
            folder / "logs" / "upstream.log",
        ).start()
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        stack = Stack(
            StackConfig(
                data_dir=folder / "stack",
                catalogue_path=DEFAULT_CATALOGUE,
                gateway_port=free_port(),
                dashboard_port=free_port(),
                billing_port=free_port(),
                worker_country=COUNTRY,
                demo_credit_eur="1000",
                start_route_workers=False,
                extra_env=GATEWAY_ENV,
            ),
            say=lambda message: None,
        )
        litellm: ManagedProcess | None = None
        floor: Floor | None = None
        try:
            upstream.wait_until(lambda: port_open("127.0.0.1", upstream_port), 30, "readiness")
            say("starting LiteLLM's proxy ...")
            litellm, litellm_url = start_litellm(folder, upstream_url)
            say("starting the Regio stack (openai_proxy worker) ...")
            stack.start()
            worker = stack.start_worker(
                ROUTE,
                COUNTRY,
                REGIO_WORKER_ENGINE="openai_proxy",
                REGIO_UPSTREAM_BASE_URL=upstream_url,
                **WORKER_ENV,
            )
            stack.wait_for_worker(worker, ROUTE, COUNTRY)
            demo = stack.seed_demo()
            assert stack.postgres is not None  # the bench starts its own
            say("starting the floor (Regio's hops, no Regio code) ...")
            floor = start_floor(
                folder / "floor",
                stack.postgres.create_database("bench_floor"),
                upstream_url + "/chat/completions",
            )
            regio_url = stack.gateway_url + "/v1/chat/completions"
            models = stack.gateway_url + "/v1/models"
            auth = {"Authorization": f"Bearer {demo.api_key}"}
            worker.wait_until(  # the new key reaches the gateway within a second
                lambda: bool(_get_json(models, auth)["data"]), 10, "the demo key at the gateway"
            )
            before = wait_settled(stack, demo.account_id)
            say(
                f"{os.cpu_count()} cores; LiteLLM {litellm_version()} "
                f"({LITELLM_WORKERS} workers, no database); "
                f"Regio worker env {WORKER_ENV}, gateway env {GATEWAY_ENV}; "
                f"levels (concurrency, requests) {LEVELS}, "
                "each after a warm-up of max(20, 2xc) requests"
            )
            pids = _pids(stack, upstream, litellm, floor)
            targets = {
                "direct": (upstream_url + "/chat/completions", "sk-upstream", "bench"),
                "floor": (floor.url, "sk-upstream", "bench"),
                "LiteLLM": (litellm_url, LITELLM_MASTER_KEY, "bench"),
                "Regio": (regio_url, demo.api_key, ROUTE),
            }
            for stream in (False, True):
                for concurrency, count in LEVELS:
                    for target in TARGETS:
                        url, key, model = targets[target]
                        warm, run = measure(
                            target, url, key, model, stream, concurrency, count, pids
                        )
                        warm_runs.append(warm)
                        runs.append(run)
                        say(
                            f"  {'stream' if stream else 'json':<6} c={concurrency:<4}"
                            f"{target:<8} {run.rps:8.0f} req/s  errors {run.errors or 0}"
                        )
            after = wait_settled(stack, demo.account_id)
        finally:
            if floor is not None:
                floor.stop()
            stack.stop()
            if litellm is not None:
                litellm.stop()
            upstream.stop()
    print()
    print(table(runs, stream=False))
    print()
    print(table(runs, stream=True))
    print()
    print(cpu_table(runs))
    print()
    print(targets_table(runs))
    print()
    regio = [run for run in runs + warm_runs if run.target == "Regio"]
    answered = sum(run.ok for run in regio)
    failed = sum(sum(run.errors.values()) for run in regio)
    expected = sum(
        request_cost_nano(p, c, route.input_price_nano, route.output_price_nano)
        for run in regio
        for p, c in run.usages
    )
    charged = before["balance_nano"] - after["balance_nano"]
    verdict = "OK: each request charged exactly once" if charged == expected else "MISMATCH"
    print(
        f"billing check: {answered} Regio answers (warm-ups included), {failed} failed; "
        f"sum(reported usage x price) = {expected} nano-EUR; balance decrease = {charged} "
        f"nano-EUR; held after = {after['held_nano']} -> {verdict}"
    )
    print(f"total bench time {time.monotonic() - started:.0f}s")
    if charged != expected:
        raise SystemExit(1)


def _get_json(url: str, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _pids(
    stack: Stack, upstream: ManagedProcess, litellm: ManagedProcess, floor: Floor
) -> dict[str, list[int]]:
    """The processes whose CPU time is reported, by column: the floor's four are one."""
    groups: dict[str, list[int | None]] = {
        "upstream": [upstream.pid],
        "litellm": [litellm.pid],
        "floor": [floor.nats.process.pid, *(process.pid for process in floor.processes)],
    }
    for service in stack.services:
        groups[service.name.split("-")[0]] = [service.pid]
    if stack.nats is not None:
        groups["nats"] = [stack.nats.process.pid]
    if stack.postgres is not None and stack.postgres.process is not None:
        groups["postgres"] = [stack.postgres.process.pid]
    return {name: [pid for pid in pids if pid is not None] for name, pids in groups.items()}


if __name__ == "__main__":
    main()
