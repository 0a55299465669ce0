"""The benchmark runner: start the API, drive scenarios on 127.0.0.1, write the report.

    python -m load.bench --database-url URL --redis-url URL [--workers 1] [--duration 15]
        [--concurrency 64] [--max-requests N] [--scenario NAME ...] [--repeat 1]
        [--db-latency-ms 0,0.5] [--open-loop-rates 500,1000] [--results FILE.json]
        [--compare PREVIOUS.json] [--report docs/benchmarks.md] [--smoke]

For every scenario run a fresh uvicorn subprocess is started on a free port of 127.0.0.1 with
Carebook's production settings (or the constant-JSON baseline with the same uvicorn flags), the
runner waits for `/health/ready`, scrapes `/metrics` before and after the load to compute the
cache hit rate, and stops the server (SIGINT, then SIGKILL after a deadline) whatever happens.
With `--repeat N` all scenarios run in N interleaved rounds and the report quotes medians.
`--db-latency-ms` runs the anti-pattern comparisons again with PostgreSQL behind a proxy that
delays each direction (load/latency_proxy.py); `--open-loop-rates` runs `mixed` at constant
arrival rates; `--results` writes the medians as JSON, and `--compare` puts a previous run's
JSON next to them (a before/after table).
The database must already be migrated and seeded; see load/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from load import prepare
from load.client import (
    LOOPBACK,
    LatencySummary,
    LoadPlan,
    LoadResult,
    OpenLoopPlan,
    OpenLoopResult,
    build_request,
    cycle_requests,
    fetch,
    merge_results,
    new_event_loop,
    run_calls,
    run_load,
    run_open_loop,
)
from load.latency_proxy import ProxyProcess, ProxyStats, proxy_process
from load.scenarios import (
    SCALE_SCENARIOS,
    SCENARIOS,
    Contention,
    Dataset,
    Scenario,
    Setup,
    Workload,
    load_dataset,
    route_present,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = ("app", "load", "workers", "alembic", "pyproject.toml")  # what a run depends on
LOG_SCAN_BYTES = 2_000_000
_PROBLEM_LEVELS = {"warning", "error", "critical"}
BEGIN_MARK = "<!-- load.bench:begin -->"
END_MARK = "<!-- load.bench:end -->"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
PRIME_CONCURRENCY = 16
PRIME_LIMIT_S = 120.0
SMOKE = {
    "duration_s": 2.0,
    "warmup_s": 0.5,
    "concurrency": 4,
    "max_requests": 400,
    "contenders": 20,
    "contention_slots": 2,
}
BURST_LIMIT_S = 30.0  # one contention burst (every client once) must end within this
# What runs again behind the latency proxy: the scenarios compared with a baseline that talks to
# PostgreSQL (the anti-patterns and the raw asyncpg floors), and those baselines.
LATENCY_SCENARIOS = (
    "availability-cold",
    "booking",
    "contention",
    "listing",
    "raw-availability",
    "raw-booking",
    "naive-listing",
    "naive-availability",
    "naive-contention",
)
OPEN_LOOP_SCENARIO = "mixed"  # the audits' rates are the mixed workload's
OPEN_LOOP_MAX_CONNECTIONS = 512
RESULTS_FORMAT = "carebook-load-results/1"
_CACHE_SAMPLE = re.compile(
    r"^carebook_cache_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)", re.MULTILINE
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class BenchConfig:
    database_url: str
    redis_url: str
    workers: int = 1
    duration_s: float = 15.0
    warmup_s: float = 2.0
    concurrency: int = 64
    max_requests: int = 1_000_000
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    repeat: int = 1
    command: str = ""
    profile_dir: Path | None = None  # py-spy the server in round 1 (distorts that round)
    mixed_workers: int | None = None  # uvicorn workers of the mixed scenario (default: workers)
    contenders: int = 100  # clients of the contention scenarios, all on one slot at once
    contention_slots: int = 5  # slots fought over, one burst each
    scale_database_url: str | None = None  # a larger dataset for the scale check
    server_settings: tuple[tuple[str, str], ...] = ()  # extra CAREBOOK_* for Carebook (A/B runs)
    # Each value > 0 runs `latency_scenarios` again with PostgreSQL behind the latency proxy,
    # each direction delayed by that many ms; the main run is always direct (0).
    db_latencies_ms: tuple[float, ...] = (0.0,)
    latency_scenarios: tuple[str, ...] = LATENCY_SCENARIOS
    open_loop_rates: tuple[float, ...] = ()  # `mixed` at these constant arrival rates
    open_loop_max_connections: int = OPEN_LOOP_MAX_CONNECTIONS
    compare: Path | None = None  # a previous run's results JSON, for the before/after table
    results: Path | None = None  # where to write this run's results JSON

    @property
    def proxied_latencies(self) -> tuple[float, ...]:
        return tuple(ms for ms in self.db_latencies_ms if ms > 0)

    def plan(
        self, port: int, *, budget: int | None = None, expected: frozenset[int] = frozenset()
    ) -> LoadPlan:
        return LoadPlan(
            port=port,
            concurrency=self.concurrency,
            duration_s=self.duration_s,
            max_requests=min(self.max_requests, budget or self.max_requests),
            warmup_s=self.warmup_s,
            expected_statuses=expected,
        )

    def open_loop(
        self,
        port: int,
        rate: float,
        *,
        budget: int | None = None,
        expected: frozenset[int] = frozenset(),
    ) -> OpenLoopPlan:
        return OpenLoopPlan(
            port=port,
            rate=rate,
            duration_s=self.duration_s,
            max_requests=min(self.max_requests, budget or self.max_requests),
            warmup_s=self.warmup_s,
            connections=min(self.concurrency, self.open_loop_max_connections),
            max_connections=self.open_loop_max_connections,
            expected_statuses=expected,
        )

    def burst(self, port: int, expected: frozenset[int]) -> LoadPlan:
        """Every contender once, all at the same moment, nothing left out as warm-up."""
        return LoadPlan(
            port=port,
            concurrency=self.contenders,
            duration_s=BURST_LIMIT_S,
            max_requests=self.contenders,
            warmup_s=0,
            expected_statuses=expected,
            open_first=True,
        )

    def workers_for(self, scenario: Scenario) -> int:
        if scenario.mixed_workers and self.mixed_workers:
            return self.mixed_workers
        return self.workers


@dataclass(frozen=True)
class ScenarioRun:
    scenario: str
    workers: int
    result: LoadResult
    server_cpu_s: float | None  # the uvicorn processes, load window (warm-up included)
    database_cpu_s: float | None = None  # the backends serving it, same window
    cache_hit_rate: float | None = None  # after warm-up; None when not measured
    priming: Priming | None = None
    within_one_minute: bool = True  # the timed run did not cross a clock minute
    profile: Path | None = None  # py-spy collapsed stacks, when profiled
    server_log: dict[str, int] = field(default_factory=dict)  # warnings/errors by message
    dataset: str = ""  # the dataset's size label (the scale check runs on a second one)
    contention: Contention | None = None  # winners and rows per contended slot
    skipped: str | None = None  # why the scenario did not run (its endpoint is absent)
    notes: tuple[str, ...] = ()  # what its setup prepared
    in_process: bool = False  # a baseline run inside the runner: generator CPU is all its work
    db_latency_ms: float = 0.0  # each direction to PostgreSQL delayed by this (the proxy)
    proxy: ProxyStats | None = None  # what the proxy forwarded during the run
    proxy_cpu_s: float | None = None
    open_loop: OpenLoopResult | None = None  # a constant-arrival-rate run

    @property
    def rate(self) -> float | None:
        return self.open_loop.rate if self.open_loop is not None else None

    @property
    def variant(self) -> str:
        """How the run differs from the main one: `db +0.5 ms`, `open loop 500/s`, or ``."""
        parts = []
        if self.db_latency_ms:
            parts.append(f"db +{self.db_latency_ms:g} ms")
        if self.open_loop is not None:
            parts.append(f"open loop {self.open_loop.rate:g}/s")
        return ", ".join(parts)

    @property
    def key(self) -> tuple[str, str, float, float]:
        """What repeated runs of the same thing share (rounds are grouped by it)."""
        return (self.scenario, self.dataset, self.db_latency_ms, self.rate or 0.0)


def hit_rate(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """Hits over lookups between two scrapes of the cache counters."""
    hits = after.get("hit", 0.0) - before.get("hit", 0.0)
    misses = after.get("miss", 0.0) - before.get("miss", 0.0)
    return hits / (hits + misses) if hits + misses > 0 else None


@dataclass
class BenchReport:
    config: BenchConfig
    dataset: Dataset
    started: datetime
    commit: str = ""  # read when the run starts
    machine: str = ""
    rounds: list[list[ScenarioRun]] = field(default_factory=list)
    scale_dataset: Dataset | None = None
    previous: dict[str, Any] | None = None  # a previous run's results (`--compare`)


# --- the server under test -------------------------------------------------------------------


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(
    config: BenchConfig,
    *,
    cache_enabled: bool,
    database_url: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of the API process: the caller's, minus any CAREBOOK_*, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBOOK_")}
    env.update(
        {
            "CAREBOOK_DATABASE_URL": database_url or config.database_url,
            "CAREBOOK_REDIS_URL": config.redis_url,
            "CAREBOOK_ENVIRONMENT": "production",
            "CAREBOOK_JWT_SECRET": secrets.token_urlsafe(36),  # 48 characters
            "CAREBOOK_RATE_LIMIT_ENABLED": "false",
            "CAREBOOK_LOG_LEVEL": "WARNING",
            "CAREBOOK_CACHE_ENABLED": "true" if cache_enabled else "false",
            **(extra or {}),
        }
    )
    return env


def server_command(app: str, port: int, workers: int) -> list[str]:
    """The uvicorn command line, identical for Carebook and the baseline apart from the app
    (`load.serve`: several workers each on their own socket, as `carebook serve` runs them)."""
    return [
        sys.executable,
        "-m",
        "load.serve",
        app,
        "--factory",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--no-server-header",  # as `carebook serve`
    ]


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc), for CPU accounting."""
    found = [pid]
    for current in found:
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with suppress(OSError):
                found.extend(int(child) for child in children.read_text().split())
    return found


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` and its live descendants; None where /proc is absent."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for member in _process_tree(pid):
            with suppress(FileNotFoundError, ProcessLookupError):
                stat = Path(f"/proc/{member}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return total / ticks


def _proc_cpu_ticks(pid: str) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def database_cpu_ticks(database: str) -> dict[int, int] | None:
    """CPU ticks by pid of the PostgreSQL backends connected to `database` (their process
    titles name it), on this machine; None where /proc is absent."""
    try:
        entries = [entry.name for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except OSError:
        return None
    needle = f" {database} ".encode()
    found = {}
    for pid in entries:
        with suppress(OSError, ValueError, IndexError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
            if title.startswith(b"postgres: ") and needle in title.replace(b"\0", b" "):
                found[int(pid)] = _proc_cpu_ticks(pid)
    return found


def reaped_backend_ticks() -> int | None:
    """CPU ticks of the PostgreSQL postmaster's exited children (`cutime` + `cstime`), found as
    the parent of a process titled `postgres: `; None where there is none or no /proc."""
    try:
        entries = [entry.name for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except OSError:
        return None
    for pid in entries:
        with suppress(OSError, ValueError, IndexError):
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres: "):
                continue
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            fields = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[13]) + int(fields[14])
    return None


def database_cpu_seconds(
    before: Mapping[int, int] | None,
    after: Mapping[int, int] | None,
    reaped_before: int | None = None,
    reaped_after: int | None = None,
) -> float | None:
    """CPU seconds the backends spent between two snapshots: what each live one added, and all
    of those that started meanwhile. With the postmaster's reaped-children ticks of both
    snapshots, backends that exited in between count too: SQLAlchemy's pool closes overflow
    connections it cannot queue and opens new ones under load, and most of a saturated run's
    statements ran on backends gone by its end (then every exited backend of the server counts,
    whichever its database: the machine's other work can add to it)."""
    if before is None or after is None:
        return None
    ticks = sum(value - before.get(pid, 0) for pid, value in after.items())
    if reaped_before is not None and reaped_after is not None:
        exited_before = sum(value for pid, value in before.items() if pid not in after)
        ticks += reaped_after - reaped_before - exited_before
    return max(ticks, 0) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    process: asyncio.subprocess.Process
    port: int
    log: IO[bytes]

    def log_tail(self, limit: int = 4000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:]

    def log_problems(self, since: int = 0) -> dict[str, int]:
        """Warnings and errors the server logged so far (after byte `since`), by message."""
        self.log.flush()
        self.log.seek(since)
        return log_problems(self.log.read(LOG_SCAN_BYTES).decode(errors="replace"))

    def log_offset(self) -> int:
        """Where the log ends now: start-up messages are not the load's."""
        self.log.flush()
        return self.log.seek(0, os.SEEK_END)


def log_problems(text: str) -> dict[str, int]:
    """Count WARNING/ERROR lines by message: Carebook's JSON lines and uvicorn's plain ones."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        message = None
        if line.startswith("{"):
            with suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("level") in _PROBLEM_LEVELS:
                    message = str(entry.get("message", ""))
                    if entry.get("error"):  # e.g. the exception type of a failed Redis call
                        message += f" ({entry['error']})"
        else:
            level, sep, rest = line.partition(":")
            if sep and level.strip().lower() in _PROBLEM_LEVELS:
                message = rest.strip()
        if message is not None:
            message = message[:80]
            found[message] = found.get(message, 0) + 1
    return found


async def _wait_ready(server: Server) -> None:
    probe = build_request("GET", "/health/ready", port=server.port)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.returncode is not None:
            raise RuntimeError(
                f"the server exited with status {server.process.returncode}:\n{server.log_tail()}"
            )
        with suppress(Exception):  # not listening yet, or answering garbage while starting
            response = await fetch(server.port, probe, limit_s=2.0)
            if response.status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the server was not ready in {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


async def _stop(server: Server) -> None:
    """SIGINT (uvicorn shuts down gracefully), then SIGKILL to its session after a deadline."""
    process = server.process
    try:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            with suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        if process.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: uvicorn and workers
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    finally:
        server.log.close()


@asynccontextmanager
async def serving(
    app: str,
    config: BenchConfig,
    *,
    cache_enabled: bool,
    env: Mapping[str, str] | None = None,
    workers: int | None = None,
) -> AsyncIterator[Server]:
    """A uvicorn subprocess on a free 127.0.0.1 port, ready; always stopped on the way out."""
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _stop
    try:
        process = await asyncio.create_subprocess_exec(
            *server_command(app, port, workers or config.workers),
            cwd=REPO_ROOT,
            env=dict(env) if env is not None else server_env(config, cache_enabled=cache_enabled),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    server = Server(process, port, log)
    try:
        await _wait_ready(server)
        yield server
    finally:
        await _stop(server)


# --- metrics -----------------------------------------------------------------------------------


def parse_cache_counters(text: str, cache: str) -> dict[str, float]:
    """`{"hit": n, "miss": m}` of `carebook_cache_requests_total{cache=...}` in Prometheus text."""
    counts: dict[str, float] = {}
    for sample in _CACHE_SAMPLE.finditer(text):
        labels = dict(_LABEL.findall(sample["labels"]))
        if labels.get("cache") == cache and "result" in labels:
            counts[labels["result"]] = counts.get(labels["result"], 0.0) + float(sample["value"])
    return counts


async def scrape_cache(port: int, cache: str) -> dict[str, float]:
    response = await fetch(port, build_request("GET", "/metrics", port=port), limit_s=5.0)
    if response.status != 200:
        raise RuntimeError(f"GET /metrics answered {response.status}")
    return parse_cache_counters(response.body.decode(), cache)


# --- running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Priming:
    """The untimed pass that fills the cache: each distinct request once."""

    requests: int
    seconds: float
    errors: int
    realigned: bool  # waited for the next clock minute and primed again


async def prime(port: int, requests: Sequence[bytes], concurrency: int) -> LoadResult:
    """Send each request once (bounded: 120 s), e.g. to fill the response cache."""
    plan = LoadPlan(
        port=port,
        concurrency=min(concurrency, PRIME_CONCURRENCY),
        duration_s=PRIME_LIMIT_S,
        max_requests=len(requests),
        warmup_s=0,
    )
    return await run_load(plan, cycle_requests(requests))


def seconds_left_in_minute() -> float:
    now = datetime.now(UTC)
    return 60.0 - now.second - now.microsecond / 1e6


async def _prime_within_minute(
    port: int, requests: Sequence[bytes], config: BenchConfig
) -> Priming:
    """Prime; if the timed run would then cross a clock minute, wait for the next minute and
    prime again (the keys of the old minute are no longer looked up)."""
    first = await prime(port, requests, config.concurrency)
    if seconds_left_in_minute() >= config.duration_s + 1:
        return Priming(len(requests), first.elapsed_s, first.errors, realigned=False)
    if config.duration_s + first.elapsed_s + 2 >= 60:
        return Priming(len(requests), first.elapsed_s, first.errors, realigned=False)
    await asyncio.sleep(seconds_left_in_minute() + 0.05)
    again = await prime(port, requests, config.concurrency)
    return Priming(len(requests), again.elapsed_s, again.errors, realigned=True)


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH; None when not installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def _profile(pid: int, delay_s: float, seconds: float, output: Path) -> bool:
    """py-spy on the server after the warm-up, collapsed stacks to `output`: samples of the
    thread holding the GIL, taken without pausing the server."""
    executable = py_spy()
    if executable is None:
        _say("  py-spy is not installed: no profile")
        return False
    await asyncio.sleep(delay_s)
    process = await asyncio.create_subprocess_exec(
        executable,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        "100",
        "--format",
        "raw",
        "--subprocesses",
        "--gil",  # only samples holding the GIL: Python work, not idle pool threads
        "--nonblocking",
        "--output",
        str(output),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(process.wait(), seconds + 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode == 0


def _difference(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


def _empty_result(concurrency: int) -> LoadResult:
    return LoadResult(
        concurrency=concurrency,
        requests=0,
        ok=0,
        elapsed_s=0.0,
        throughput=0.0,
        latency=LatencySummary.from_ns([]),
        status_errors={},
        transport_errors={},
        warmup_requests=0,
        cpu_s=0.0,
        mean_body_bytes=0.0,
    )


@asynccontextmanager
async def _database_for(scenario: Scenario, dataset: Dataset) -> AsyncIterator[str]:
    """The prepared database, or a scratch copy of it for a scenario that writes."""
    if not scenario.scratch:
        yield dataset.database_url
        return
    async with prepare.scratch_copy(dataset.database_url, f"run{os.getpid()}") as url:
        yield url


def _setup(config: BenchConfig, dataset: Dataset, port: int, database_url: str) -> Setup:
    return Setup(
        dataset=dataset,
        port=port,
        database_url=database_url,
        concurrency=config.concurrency,
        max_requests=config.max_requests,
        contenders=config.contenders,
        contention_slots=config.contention_slots,
    )


def via_proxy(database_url: str, port: int) -> str:
    """The database URL with its host and port replaced by the latency proxy's."""
    parts = urlsplit(database_url)
    if parts.hostname not in {LOOPBACK, "localhost"}:
        raise ValueError(
            f"--db-latency-ms needs PostgreSQL on {LOOPBACK} (the proxy only uses loopback)"
        )
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{LOOPBACK}:{port}"))


def database_port(database_url: str) -> int:
    return urlsplit(database_url).port or 5432


def proxy_delta(before: ProxyStats, after: ProxyStats) -> ProxyStats:
    """What the proxy forwarded between two snapshots (its lateness is already per snapshot)."""
    return replace(
        after,
        connections=after.connections - before.connections,
        chunks=after.chunks - before.chunks,
        bytes=after.bytes - before.bytes,
    )


async def run_scenario(
    scenario: Scenario,
    config: BenchConfig,
    dataset: Dataset,
    *,
    profile_to: Path | None = None,
    proxy: ProxyProcess | None = None,
    rate: float | None = None,
) -> ScenarioRun:
    """Start the scenario's server (on a scratch copy if it writes), prepare and load it,
    measure it and stop it. In-process baselines run in this process, without a server.
    With a `proxy`, the server (or the baseline) and the setup reach PostgreSQL through it;
    with a `rate`, the load is open-loop at that rate."""
    workers = config.workers_for(scenario)
    if scenario.route is not None and not route_present(scenario.route):
        return ScenarioRun(
            scenario.name,
            workers,
            _empty_result(config.concurrency),
            None,
            dataset=dataset.label,
            skipped=f"`{scenario.route[1]}` is not in this build",
        )
    async with _database_for(scenario, dataset) as database_url:
        served_url = database_url if proxy is None else via_proxy(database_url, proxy.port)
        proxy_before = await proxy.stats() if proxy is not None else None
        proxy_cpu = process_cpu_seconds(proxy.process.pid) if proxy is not None else None
        if scenario.target == "in-process":
            run = await _run_in_process(scenario, config, dataset, served_url)
        else:
            since = await prepare.database_now(database_url)
            run, workload = await _run_served(
                scenario, config, dataset, served_url, workers, profile_to, rate
            )
            if workload.logged_in and not scenario.scratch:
                await prepare.forget_logins(database_url, workload.logged_in, since)
        if proxy is not None and proxy_before is not None:
            run = replace(
                run,
                db_latency_ms=proxy.delay_ms,
                proxy=proxy_delta(proxy_before, await proxy.stats()),
                proxy_cpu_s=_difference(proxy_cpu, process_cpu_seconds(proxy.process.pid)),
            )
        return run


async def _run_in_process(
    scenario: Scenario, config: BenchConfig, dataset: Dataset, database_url: str
) -> ScenarioRun:
    workload = await scenario.setup(_setup(config, dataset, 0, database_url))
    assert workload.call is not None
    database = prepare.database_name(database_url)
    try:
        plan = config.plan(0, budget=workload.budget, expected=workload.expected_statuses)
        db_before = database_cpu_ticks(database)
        reaped_before = reaped_backend_ticks()
        result = await run_calls(plan, workload.call)
        db_after = database_cpu_ticks(database)
        reaped_after = reaped_backend_ticks()
    finally:
        if workload.close is not None:
            await workload.close()
    return ScenarioRun(
        scenario.name,
        1,
        result,
        None,
        database_cpu_s=database_cpu_seconds(db_before, db_after, reaped_before, reaped_after),
        dataset=dataset.label,
        notes=tuple(workload.notes),
        in_process=True,
    )


async def _run_served(
    scenario: Scenario,
    config: BenchConfig,
    dataset: Dataset,
    database_url: str,
    workers: int,
    profile_to: Path | None,
    rate: float | None = None,
) -> tuple[ScenarioRun, Workload]:
    # The naive booking endpoint (and its unconstrained table) only on a scratch copy.
    naive_table = scenario.target == "naive" and scenario.scratch
    extra = {"CAREBOOK_LOAD_NAIVE_TABLE": "1"} if naive_table else {}
    if scenario.target == "carebook":
        extra.update(config.server_settings)
    env = server_env(
        config, cache_enabled=scenario.cache_enabled, database_url=database_url, extra=extra
    )
    async with serving(
        scenario.app, config, cache_enabled=scenario.cache_enabled, env=env, workers=workers
    ) as server:
        workload = await scenario.setup(_setup(config, dataset, server.port, database_url))
        priming = None
        if workload.prime and scenario.prime:
            priming = await _prime_within_minute(server.port, workload.prime, config)
        elif workload.prime:
            primed = await prime(server.port, workload.prime, config.concurrency)
            priming = Priming(len(workload.prime), primed.elapsed_s, primed.errors, False)
        cache = scenario.cache_name if scenario.target == "carebook" else None
        before = await scrape_cache(server.port, cache) if cache else {}
        after_warmup: asyncio.Task[dict[str, float]] | None = None
        if cache and config.warmup_s > 0:

            async def scrape_after_warmup() -> dict[str, float]:
                await asyncio.sleep(config.warmup_s)
                return await scrape_cache(server.port, cache)

            after_warmup = asyncio.create_task(scrape_after_warmup())
        profiler: asyncio.Task[bool] | None = None
        if profile_to is not None:
            profiler = asyncio.create_task(
                _profile(
                    server.process.pid,
                    0 if workload.bursts else config.warmup_s,
                    config.duration_s - config.warmup_s,
                    profile_to,
                )
            )
        database = prepare.database_name(database_url)
        db_before = database_cpu_ticks(database)
        reaped_before = reaped_backend_ticks()
        cpu_before = process_cpu_seconds(server.process.pid)
        log_from = server.log_offset()
        minute_before = datetime.now(UTC).replace(second=0, microsecond=0)
        contention = None
        open_run = None
        try:
            if workload.bursts:
                results = []
                for burst in workload.bursts:
                    plan = config.burst(server.port, workload.expected_statuses)
                    results.append(await run_load(plan, burst))
                result = merge_results(results)
                winners = tuple(r.statuses.get(201, 0) for r in results)
                if workload.after is not None:
                    contention = await workload.after(winners)
            elif rate is not None:
                assert workload.factory is not None
                open_plan = config.open_loop(
                    server.port, rate, budget=workload.budget, expected=workload.expected_statuses
                )
                open_run = await run_open_loop(open_plan, workload.factory)
                result = open_run.result
            else:
                assert workload.factory is not None
                plan = config.plan(
                    server.port, budget=workload.budget, expected=workload.expected_statuses
                )
                result = await run_load(plan, workload.factory)
        finally:
            if after_warmup is not None and not after_warmup.done():
                after_warmup.cancel()
            if profiler is not None:
                await asyncio.gather(profiler, return_exceptions=True)
        profiled = (
            profiler is not None
            and not profiler.cancelled()
            and profiler.exception() is None
            and profiler.result()
        )
        one_minute = datetime.now(UTC).replace(second=0, microsecond=0) == minute_before
        cpu_after = process_cpu_seconds(server.process.pid)
        db_after = database_cpu_ticks(database)
        reaped_after = reaped_backend_ticks()
        server_cpu = _difference(cpu_before, cpu_after)
        rate = None
        if cache:
            if after_warmup is not None and after_warmup.done() and not after_warmup.cancelled():
                with suppress(Exception):
                    before = after_warmup.result()
            rate = hit_rate(before, await scrape_cache(server.port, cache))
        problems = server.log_problems(log_from)
    run = ScenarioRun(
        scenario.name,
        workers,
        result,
        server_cpu,
        database_cpu_s=database_cpu_seconds(db_before, db_after, reaped_before, reaped_after),
        cache_hit_rate=rate,
        priming=priming,
        within_one_minute=one_minute,
        profile=profile_to if profiled else None,
        server_log=problems,
        dataset=dataset.label,
        contention=contention,
        notes=tuple(workload.notes),
        open_loop=open_run,
    )
    return run, workload


async def run_bench(config: BenchConfig, *, dataset: Dataset | None = None) -> BenchReport:
    """Every scenario of `config`, `config.repeat` rounds, interleaved; with a scale database,
    the scale scenarios on it too, in the same rounds."""
    unknown = [name for name in config.scenarios if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {sorted(SCENARIOS)}")
    report = BenchReport(
        config=config,
        dataset=dataset or await load_dataset(config.database_url),
        started=datetime.now(UTC),
        commit=await asyncio.to_thread(commit_summary),
        machine=await asyncio.to_thread(machine_summary),
    )
    if config.compare is not None:
        report.previous = load_results(config.compare)
    jobs = [Job(name, report.dataset) for name in config.scenarios]
    if config.scale_database_url:
        report.scale_dataset = await load_dataset(config.scale_database_url)
        jobs += [
            Job(name, report.scale_dataset) for name in SCALE_SCENARIOS if name in config.scenarios
        ]
    for ms in config.proxied_latencies:
        jobs += [
            Job(name, report.dataset, latency_ms=ms)
            for name in config.scenarios
            if name in config.latency_scenarios
        ]
    if OPEN_LOOP_SCENARIO in config.scenarios:
        jobs += [
            Job(OPEN_LOOP_SCENARIO, report.dataset, rate=rate) for rate in config.open_loop_rates
        ]
    async with AsyncExitStack() as stack:
        proxies: dict[float, ProxyProcess] = {}
        for ms in sorted({job.latency_ms for job in jobs if job.latency_ms > 0}):
            proxies[ms] = await stack.enter_async_context(
                proxy_process(database_port(config.database_url), ms)
            )
        for round_number in range(1, config.repeat + 1):
            runs = []
            for job in jobs:
                _say(f"round {round_number}/{config.repeat}: {job.label(report.dataset)} ...")
                profile_to = None
                if (
                    config.profile_dir is not None
                    and round_number == 1
                    and job.main(report.dataset)
                ):
                    config.profile_dir.mkdir(parents=True, exist_ok=True)
                    profile_to = config.profile_dir / f"{job.name}.txt"
                run = await run_scenario(
                    SCENARIOS[job.name],
                    config,
                    job.dataset,
                    profile_to=profile_to,
                    proxy=proxies.get(job.latency_ms),
                    rate=job.rate,
                )
                if run.skipped:
                    _say(f"  skipped: {run.skipped}")
                else:
                    _say(
                        f"  {run.result.throughput:,.0f} req/s, "
                        f"p99 {run.result.latency.p99:.1f} ms, "
                        f"errors {run.result.error_summary()}"
                        + (f", rows per slot {run.contention.rows}" if run.contention else "")
                        + (f", dropped {run.open_loop.dropped}" if run.open_loop else "")
                    )
                runs.append(run)
            report.rounds.append(runs)
    return report


@dataclass(frozen=True)
class Job:
    """One scenario run of a round: on which dataset, at which database latency, open-loop
    at which rate."""

    name: str
    dataset: Dataset
    latency_ms: float = 0.0
    rate: float | None = None

    def main(self, main: Dataset) -> bool:
        return self.dataset is main and not self.latency_ms and self.rate is None

    def label(self, main: Dataset) -> str:
        parts = [] if self.dataset is main else [self.dataset.label]
        if self.latency_ms:
            parts.append(f"db +{self.latency_ms:g} ms")
        if self.rate is not None:
            parts.append(f"open loop {self.rate:g}/s")
        return f"{self.name} @ {', '.join(parts)}" if parts else self.name


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the report --------------------------------------------------------------------------------


def _read(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            list(command), capture_output=True, text=True, check=False, cwd=REPO_ROOT, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_summary() -> str:
    """Cores (`nproc`), memory (`free -g`) and CPU model, read now."""
    cores = _read(["nproc"]) or str(os.cpu_count())
    memory = ""
    for line in _read(["free", "-g"]).splitlines():
        if line.startswith("Mem:"):
            memory = f"{line.split()[1]} GiB (`free -g`)"
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    parts = [f"{cores} cores (`nproc`)", memory or "memory unknown", model, platform.system()]
    return ", ".join(part for part in parts if part)


def commit_summary() -> str:
    """`git rev-parse --short HEAD`, flagged when the code that ran differs from it."""
    commit = _read(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    changed = _read(["git", "status", "--porcelain", "--", *CODE_PATHS])
    return f"{commit} + uncommitted changes" if changed else commit


def redact(url: str) -> str:
    """The URL with any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _hit_rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def cpu_per_request(run: ScenarioRun) -> str:
    """CPU milliseconds per request sent (warm-up included, as the CPU columns are): the
    server's (for in-process baselines, the runner's) plus PostgreSQL's backends'."""
    sent = run.result.requests + run.result.warmup_requests
    own = run.result.cpu_s if run.in_process else run.server_cpu_s
    if not sent or own is None:
        return "-"
    database = run.database_cpu_s or 0.0
    return f"{own / sent * 1000:.2f} + {database / sent * 1000:.2f}"


_HEADER = (
    "| scenario | workers | concurrency | requests | throughput (req/s) | p50 ms | p95 ms "
    "| p99 ms | max ms | errors | vs baseline (throughput) | target | generator CPU s "
    "| server CPU s | PostgreSQL CPU s | CPU ms per request (server + PostgreSQL) "
    "| cache hit rate | body bytes | notes |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: "
    "| ---: | ---: | ---: | ---: | ---: | --- |"
)

# Each scenario's baseline(s): the report shows the scenario's throughput as a multiple of each.
BASELINES: dict[str, tuple[str, ...]] = {
    "availability-warm": ("constant",),
    "availability-cold": ("raw-availability", "naive-availability"),
    "search": ("constant",),
    "booking": ("raw-booking",),
    "contention": ("naive-contention",),
    "listing": ("naive-listing",),
    "records": ("constant",),
    "analytics": ("constant",),
    "mixed": ("constant",),
}
ANTI_PATTERN_FACTOR = 20.0
SCALE_FACTOR = 1.5


def _label(run: ScenarioRun, main: str) -> str:
    """`listing`, `listing @ 10 M`, `listing @ db +0.5 ms`, `mixed @ open loop 500/s`."""
    parts = [] if run.dataset in ("", main) else [run.dataset]
    if run.variant:
        parts.append(run.variant)
    return f"{run.scenario} @ {', '.join(parts)}" if parts else run.scenario


def _is_main(run: ScenarioRun, main: str) -> bool:
    """A run of the main dataset, database direct, closed loop."""
    return run.dataset in ("", main) and not run.variant


def _notes(run: ScenarioRun) -> str:
    if run.skipped:
        return f"skipped: {run.skipped}"
    notes = list(run.notes)
    if run.in_process:
        notes.append("in-process: generator CPU is the baseline's whole client-side work")
    if run.priming is not None:
        primed = f"primed {run.priming.requests} requests in {run.priming.seconds:.1f} s"
        if run.priming.errors:
            primed += f" ({run.priming.errors} errors)"
        notes.append(primed)
        if SCENARIOS.get(run.scenario, None) is not None and SCENARIOS[run.scenario].prime:
            notes.append("within one clock minute" if run.within_one_minute else "crossed a minute")
    if run.contention is not None:
        c = run.contention
        notes.append(
            f"201s per slot {list(c.winners)}, active rows per slot {list(c.rows)}, "
            f"double bookings {c.double_bookings}"
        )
        if run.result.statuses:
            answers = ", ".join(f"{k} x{v}" for k, v in sorted(run.result.statuses.items()))
            notes.append(f"answers {answers}")
    if run.profile is not None:
        notes.append("py-spy attached")
    if run.proxy is not None:
        proxy = run.proxy
        notes.append(
            f"PostgreSQL through the latency proxy, +{run.db_latency_ms:g} ms each way: "
            f"{proxy.chunks:,} chunks forwarded {proxy.lateness_p50_us:.0f} µs (p50), "
            f"{proxy.lateness_p99_us:.0f} µs (p99) after they were due"
            + (f", proxy CPU {run.proxy_cpu_s:.1f} s" if run.proxy_cpu_s is not None else "")
        )
    if run.open_loop is not None:
        o = run.open_loop
        notes.append(
            f"open loop at {o.rate:g} req/s: {o.scheduled:,} scheduled, {o.late:,} late, "
            f"{o.waited:,} waited for a connection, {o.dropped:,} dropped; connections "
            f"{o.initial_connections} → {o.peak_connections}"
        )
    if run.server_log:
        ranked = sorted(run.server_log.items(), key=lambda item: -item[1])
        shown = ", ".join(f"{message!r} x{n}" for message, n in ranked[:3])
        more = f" and {len(ranked) - 3} more" if len(ranked) > 3 else ""
        notes.append(f"server logged during the run {shown}{more}")
    return "; ".join(notes)


def _versus(run: ScenarioRun, table: Mapping[str, ScenarioRun]) -> str:
    parts = []
    for name in BASELINES.get(run.scenario, ()):
        base = table.get(name)
        if base is not None and base.result.throughput and run.result.throughput:
            parts.append(f"{run.result.throughput / base.result.throughput:.2f} x {name}")
    return "; ".join(parts) or "-"


def _row(
    run: ScenarioRun,
    table: Mapping[str, ScenarioRun] | None = None,
    verdicts: Mapping[str, str] | None = None,
    main: str = "",
) -> str:
    r = run.result
    label = _label(run, main)
    if run.skipped:
        cells = [label, str(run.workers), "-", *["-"] * 16]
        cells[-1] = _notes(run)
        return "| " + " | ".join(cells) + " |"
    cells = [
        label,
        str(run.workers),
        str(r.concurrency),
        f"{r.requests:,}",
        f"{r.throughput:,.0f}",
        _ms(r.latency.p50),
        _ms(r.latency.p95),
        _ms(r.latency.p99),
        _ms(r.latency.max),
        r.error_summary(),
        _versus(run, table or {}) if run.dataset in ("", main) and run.rate is None else "-",
        (verdicts or {}).get(label, "-"),
        f"{r.cpu_s:.1f}",
        _cpu(run.server_cpu_s),
        _cpu(run.database_cpu_s),
        cpu_per_request(run),
        _hit_rate(run.cache_hit_rate),
        f"{r.mean_body_bytes:,.0f}",
        _notes(run),
    ]
    return "| " + " | ".join(cells) + " |"


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def median_run(runs: Sequence[ScenarioRun]) -> ScenarioRun:
    """Column-wise medians of repeated runs of one scenario (errors: the sum; contention:
    every slot of every round)."""
    first = runs[0]
    if first.skipped:
        return first
    results = [run.result for run in runs]
    status: dict[int, int] = {}
    transport: dict[str, int] = {}
    answers: dict[int, int] = {}
    for result in results:
        for code, n in result.status_errors.items():
            status[code] = status.get(code, 0) + n
        for kind, n in result.transport_errors.items():
            transport[kind] = transport.get(kind, 0) + n
        for code, n in result.statuses.items():
            answers[code] = answers.get(code, 0) + n
    latency = replace(
        first.result.latency,
        p50=_median([r.latency.p50 for r in results]),
        p95=_median([r.latency.p95 for r in results]),
        p99=_median([r.latency.p99 for r in results]),
        max=_median([r.latency.max for r in results]),
        mean=_median([r.latency.mean for r in results]),
    )
    result = replace(
        first.result,
        requests=round(_median([r.requests for r in results])),
        ok=round(_median([r.ok for r in results])),
        elapsed_s=_median([r.elapsed_s for r in results]),
        throughput=_median([r.throughput for r in results]),
        latency=latency,
        status_errors=status,
        transport_errors=transport,
        cpu_s=_median([r.cpu_s for r in results]),
        mean_body_bytes=_median([r.mean_body_bytes for r in results]),
        statuses=answers,
        samples_ns=(),
    )
    cpus = [run.server_cpu_s for run in runs if run.server_cpu_s is not None]
    database_cpus = [run.database_cpu_s for run in runs if run.database_cpu_s is not None]
    rates = [run.cache_hit_rate for run in runs if run.cache_hit_rate is not None]
    primes = [run.priming for run in runs if run.priming is not None]
    priming = None
    if primes:
        priming = Priming(
            requests=primes[0].requests,
            seconds=_median([p.seconds for p in primes]),
            errors=sum(p.errors for p in primes),
            realigned=any(p.realigned for p in primes),
        )
    logged: dict[str, int] = {}
    for run in runs:
        for message, n in run.server_log.items():
            logged[message] = logged.get(message, 0) + n
    fights = [run.contention for run in runs if run.contention is not None]
    contention = None
    if fights:
        contention = Contention(
            winners=tuple(w for c in fights for w in c.winners),
            rows=tuple(n for c in fights for n in c.rows),
        )
    proxies = [run.proxy for run in runs if run.proxy is not None]
    proxy_cpus = [run.proxy_cpu_s for run in runs if run.proxy_cpu_s is not None]
    open_loops = [run.open_loop for run in runs if run.open_loop is not None]
    return ScenarioRun(
        first.scenario,
        first.workers,
        result,
        _median(cpus) if cpus else None,
        database_cpu_s=_median(database_cpus) if database_cpus else None,
        cache_hit_rate=_median(rates) if rates else None,
        priming=priming,
        within_one_minute=all(run.within_one_minute for run in runs),
        server_log=logged,
        dataset=first.dataset,
        contention=contention,
        notes=first.notes,
        in_process=first.in_process,
        db_latency_ms=first.db_latency_ms,
        proxy=_median_proxy(proxies) if proxies else None,
        proxy_cpu_s=_median(proxy_cpus) if proxy_cpus else None,
        open_loop=_median_open_loop(open_loops, result) if open_loops else None,
    )


def _median_latency(summaries: Sequence[LatencySummary]) -> LatencySummary:
    return LatencySummary(
        p50=_median([s.p50 for s in summaries]),
        p95=_median([s.p95 for s in summaries]),
        p99=_median([s.p99 for s in summaries]),
        max=_median([s.max for s in summaries]),
        mean=_median([s.mean for s in summaries]),
    )


def _median_proxy(stats: Sequence[ProxyStats]) -> ProxyStats:
    """Counts added up, lateness percentiles the median of the runs', the maximum the max."""
    return ProxyStats(
        connections=sum(s.connections for s in stats),
        chunks=sum(s.chunks for s in stats),
        bytes=sum(s.bytes for s in stats),
        max_queued=max(s.max_queued for s in stats),
        late_chunks=sum(s.late_chunks for s in stats),
        lateness_p50_us=_median([s.lateness_p50_us for s in stats]),
        lateness_p99_us=_median([s.lateness_p99_us for s in stats]),
        lateness_max_us=max(s.lateness_max_us for s in stats),
    )


def _median_open_loop(runs: Sequence[OpenLoopResult], result: LoadResult) -> OpenLoopResult:
    """Like the other columns: percentiles the median of the rounds', counts added up (the
    drops of every round count), connections the most any round opened."""
    return OpenLoopResult(
        rate=runs[0].rate,
        result=result,
        scheduled=sum(r.scheduled for r in runs),
        dropped=sum(r.dropped for r in runs),
        late=sum(r.late for r in runs),
        waited=sum(r.waited for r in runs),
        initial_connections=runs[0].initial_connections,
        peak_connections=max(r.peak_connections for r in runs),
        send_lag=_median_latency([r.send_lag for r in runs]),
        service=_median_latency([r.service for r in runs]),
    )


RATIOS = (
    ("availability-warm ÷ constant", "availability-warm", "constant"),
    ("availability-cold ÷ raw-availability", "availability-cold", "raw-availability"),
    ("availability-cold ÷ availability-warm", "availability-cold", "availability-warm"),
    ("availability-cold ÷ naive-availability", "availability-cold", "naive-availability"),
    ("search ÷ constant", "search", "constant"),
    ("booking ÷ raw-booking", "booking", "raw-booking"),
    ("contention ÷ naive-contention", "contention", "naive-contention"),
    ("listing ÷ naive-listing", "listing", "naive-listing"),
    ("mixed ÷ constant", "mixed", "constant"),
)


# The ratios that compare a scenario with a baseline that talks to PostgreSQL: what the latency
# proxy changes (the anti-patterns' round trips, and the raw asyncpg floors').
LATENCY_RATIOS = tuple(
    ratio for ratio in RATIOS if ratio[1] in LATENCY_SCENARIOS and ratio[2] in LATENCY_SCENARIOS
)
ANTI_PATTERNS = (
    ("listing", "listing ÷ naive-listing"),
    ("availability-cold", "availability-cold ÷ naive-availability"),
    ("contention", "contention ÷ naive-contention"),
)


def _main_runs(
    report: BenchReport, runs: Sequence[ScenarioRun], latency_ms: float = 0.0
) -> dict[str, ScenarioRun]:
    """The runs of the main dataset, closed loop, at one database latency, by scenario."""
    main = report.dataset.label
    return {
        r.scenario: r
        for r in runs
        if r.dataset in ("", main)
        and r.open_loop is None
        and r.db_latency_ms == latency_ms
        and not r.skipped
    }


def ratios(
    report: BenchReport,
    latency_ms: float = 0.0,
    which: Sequence[tuple[str, str, str]] = RATIOS,
) -> list[tuple[str, list[float]]]:
    """Throughput ratios measured within each round (rounds missing a side are skipped), of
    the runs at one database latency (0: the main, direct runs)."""
    found = []
    for label, top, bottom in which:
        values = []
        for runs in report.rounds:
            by_name = {
                n: r.result.throughput for n, r in _main_runs(report, runs, latency_ms).items()
            }
            if by_name.get(top) and by_name.get(bottom):
                values.append(by_name[top] / by_name[bottom])
        if values:
            found.append((label, values))
    return found


@dataclass(frozen=True)
class Verdict:
    """One target of issue 8 against what was measured."""

    target: str
    scenario: str  # the row of the results table the target belongs to
    measured: str
    met: bool | None  # None: not measured in this run
    shortfall: str = ""

    @property
    def short(self) -> str:
        """The target in a few words, for the results table's *target* column."""
        for prefix, short in _SHORT.items():
            if self.target.startswith(prefix):
                return short
        return self.target

    @property
    def status(self) -> str:
        if self.met is None:
            return "not measured"
        return "met" if self.met else f"**missed** ({self.shortfall})"


_SHORT = {
    "warm availability ≥ 50 %": "≥ 0.5 x constant",
    "cold availability ≥ 60 %": "≥ 0.6 x raw",
    "bookings ≥ 25 %": "≥ 0.25 x raw",
    "bookings p99": "p99 < 50 ms",
    "contention: exactly one": "one winner per slot",
    "contention p99": "p99 < 100 ms",
    "mixed ≥ 1,500": "≥ 1,500 req/s",
    "mixed p95": "p95 ≤ 40 ms",
    "mixed p99": "p99 ≤ 100 ms",
    "mixed: no errors": "no errors",
    "listing ≥": "≥ 20 x anti-pattern",
    "availability-cold ≥": "≥ 20 x anti-pattern",
    "contention ≥": "≥ 20 x anti-pattern",
    "availability-cold at": "≤ 1.5 x smaller dataset",
    "listing at": "≤ 1.5 x smaller dataset",
    "mixed at": "p95 ≤ 40 ms, p99 ≤ 100 ms, rate kept",
}


def _at_least(value: float, floor: float) -> str:
    if value <= 0:
        return "nothing measured"
    if floor / value < 1.5:
        return f"{(1 - value / floor) * 100:.0f} % short"
    return f"{floor / value:.1f}x short"


def _below(value: float, ceiling: float) -> str:
    if value / ceiling < 2:
        return f"{(value / ceiling - 1) * 100:+.0f} % over"
    return f"{value / ceiling:.1f}x over"


def verdicts(report: BenchReport) -> list[Verdict]:
    """Issue 8's targets, from the medians (ratios: the median of within-round ratios)."""
    medians = median_table(report)
    main = report.dataset.label
    table = {r.scenario: r for r in medians.values() if _is_main(r, main) and not r.skipped}
    found = dict(ratios(report))
    out: list[Verdict] = []

    def ratio_target(
        text: str,
        label: str,
        scenario: str,
        floor: float,
        measured: Mapping[str, list[float]] = found,
    ) -> None:
        values = measured.get(label)
        if not values:
            out.append(Verdict(text, scenario, "-", None))
            return
        value = _median(values)
        out.append(Verdict(text, scenario, f"{value:.2f}", value >= floor, _at_least(value, floor)))

    def latency_target(
        text: str, scenario: str, field_name: str, ceiling: float, strict: bool
    ) -> None:
        run = table.get(scenario)
        if run is None:
            out.append(Verdict(text, scenario, "-", None))
            return
        value = float(getattr(run.result.latency, field_name))
        met = value < ceiling if strict else value <= ceiling
        out.append(
            Verdict(
                text,
                scenario,
                f"{field_name} {_ms(value)} ms at {run.result.concurrency} clients",
                met,
                _below(value, ceiling),
            )
        )

    ratio_target(
        "warm availability ≥ 50 % of the constant endpoint",
        "availability-warm ÷ constant",
        "availability-warm",
        0.5,
    )
    ratio_target(
        "cold availability ≥ 60 % of the raw asyncpg query",
        "availability-cold ÷ raw-availability",
        "availability-cold",
        0.6,
    )
    ratio_target("bookings ≥ 25 % of the raw transaction", "booking ÷ raw-booking", "booking", 0.25)
    latency_target("bookings p99 < 50 ms (at 64 clients)", "booking", "p99", 50.0, True)
    contention = table.get("contention")
    if contention is None or contention.contention is None:
        out.append(Verdict("contention: exactly one winner per slot", "contention", "-", None))
    else:
        fight = contention.contention
        exact = all(n == 1 for n in fight.winners) and all(n == 1 for n in fight.rows)
        out.append(
            Verdict(
                "contention: exactly one winner per slot",
                "contention",
                f"201s per slot {list(fight.winners)}, rows {list(fight.rows)}",
                exact,
                "not exactly one",
            )
        )
    latency_target("contention p99 < 100 ms", "contention", "p99", 100.0, True)
    mixed = table.get("mixed")
    if mixed is None:
        out.append(Verdict("mixed ≥ 1,500 requests/s", "mixed", "-", None))
    else:
        value = mixed.result.throughput
        out.append(
            Verdict(
                "mixed ≥ 1,500 requests/s",
                "mixed",
                f"{value:,.0f} req/s with {mixed.workers} worker(s)",
                value >= 1500,
                _at_least(value, 1500),
            )
        )
    latency_target("mixed p95 ≤ 40 ms", "mixed", "p95", 40.0, False)
    latency_target("mixed p99 ≤ 100 ms", "mixed", "p99", 100.0, False)
    if mixed is not None:
        errors = mixed.result.errors
        out.append(
            Verdict(
                "mixed: no errors",
                "mixed",
                mixed.result.error_summary(),
                errors == 0,
                f"{errors} errors",
            )
        )
    for name, label in ANTI_PATTERNS:
        ratio_target(
            f"{name} ≥ {ANTI_PATTERN_FACTOR:g}x its anti-pattern's throughput",
            label,
            name,
            ANTI_PATTERN_FACTOR,
        )
    for ms in report.config.proxied_latencies:
        at_latency = dict(ratios(report, ms, LATENCY_RATIOS))
        for name, label in ANTI_PATTERNS:
            ratio_target(
                f"{name} ≥ {ANTI_PATTERN_FACTOR:g}x its anti-pattern's throughput, "
                f"database +{ms:g} ms each way",
                label,
                f"{name} @ db +{ms:g} ms",
                ANTI_PATTERN_FACTOR,
                at_latency,
            )
    for run in medians.values():
        if run.open_loop is not None and not run.skipped and run.dataset in ("", main):
            out.append(open_loop_verdict(run))
    naive = table.get("naive-contention")
    if naive is not None and naive.contention is not None:
        out.append(
            Verdict(
                "check-then-insert lets double bookings through (counted, not a target)",
                "naive-contention",
                f"{naive.contention.double_bookings} double bookings over "
                f"{len(naive.contention.rows)} slots (rows per slot "
                f"{list(naive.contention.rows)})",
                None,
            )
        )
    if report.scale_dataset is not None:
        for scale in scale_rows(report):
            out.append(
                Verdict(
                    f"{scale.scenario} at {scale.large} ≤ {SCALE_FACTOR:g}x {scale.small} "
                    "(p50 and p95)",
                    f"{scale.scenario} @ {scale.large}",
                    f"p50 x {scale.p50_ratio:.2f}, p95 x {scale.p95_ratio:.2f}",
                    max(scale.p50_ratio, scale.p95_ratio) <= SCALE_FACTOR,
                    _below(max(scale.p50_ratio, scale.p95_ratio), SCALE_FACTOR),
                )
            )
    return out


OPEN_LOOP_P95_MS = 40.0  # the mixed workload's latency targets, at the audits' rates
OPEN_LOOP_P99_MS = 100.0
KEPT_UP = 0.95  # an open-loop run kept up when it answered this share of its rate


def open_loop_verdict(run: ScenarioRun) -> Verdict:
    """The mixed targets at a fixed arrival rate: p95 ≤ 40 ms and p99 ≤ 100 ms from the
    scheduled time, the rate kept up with, nothing dropped, no errors."""
    assert run.open_loop is not None
    o, r = run.open_loop, run.result
    misses = []
    if r.latency.p95 > OPEN_LOOP_P95_MS:
        misses.append(f"p95 {_below(r.latency.p95, OPEN_LOOP_P95_MS)}")
    if r.latency.p99 > OPEN_LOOP_P99_MS:
        misses.append(f"p99 {_below(r.latency.p99, OPEN_LOOP_P99_MS)}")
    if r.throughput < KEPT_UP * o.rate:
        misses.append(f"achieved {_at_least(r.throughput, o.rate)}")
    if o.dropped:
        misses.append(f"{o.dropped:,} dropped")
    if r.errors:
        misses.append(f"{r.errors:,} errors")
    return Verdict(
        f"{run.scenario} at {o.rate:,.0f} requests/s (open loop): p95 ≤ "
        f"{OPEN_LOOP_P95_MS:g} ms, p99 ≤ {OPEN_LOOP_P99_MS:g} ms, rate kept, nothing dropped",
        f"{run.scenario} @ {run.variant}",
        f"p95 {_ms(r.latency.p95)} ms, p99 {_ms(r.latency.p99)} ms, "
        f"{r.throughput:,.0f} req/s achieved, {o.dropped:,} dropped, errors {r.error_summary()}",
        not misses,
        "; ".join(misses),
    )


def median_table(report: BenchReport) -> dict[tuple[str, str, float, float], ScenarioRun]:
    """Median runs keyed by `ScenarioRun.key` (scenario, dataset label, database latency,
    open-loop rate), in the order they ran."""
    grouped: dict[tuple[str, str, float, float], list[ScenarioRun]] = {}
    for runs in report.rounds:
        for run in runs:
            grouped.setdefault(run.key, []).append(run)
    return {key: median_run(runs) for key, runs in grouped.items()}


@dataclass(frozen=True)
class ScaleRow:
    scenario: str
    small: str
    large: str
    small_run: ScenarioRun
    large_run: ScenarioRun

    @property
    def p50_ratio(self) -> float:
        return self.large_run.result.latency.p50 / max(self.small_run.result.latency.p50, 1e-9)

    @property
    def p95_ratio(self) -> float:
        return self.large_run.result.latency.p95 / max(self.small_run.result.latency.p95, 1e-9)


def scale_rows(report: BenchReport) -> list[ScaleRow]:
    if report.scale_dataset is None:
        return []
    medians = median_table(report)
    small, large = report.dataset.label, report.scale_dataset.label
    rows = []
    for name in SCALE_SCENARIOS:
        a, b = medians.get((name, small, 0.0, 0.0)), medians.get((name, large, 0.0, 0.0))
        if a is not None and b is not None and not a.skipped and not b.skipped:
            rows.append(ScaleRow(name, small, large, a, b))
    return rows


def render_report(report: BenchReport) -> str:
    """The Markdown section the runner owns in docs/benchmarks.md."""
    config = report.config
    dataset = report.dataset
    main = dataset.label
    scale = report.scale_dataset
    mixed_workers = config.mixed_workers or config.workers
    lines = [
        f"### Run of {report.started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- **machine**: {report.machine or machine_summary()}; shared with PostgreSQL, Redis "
        "and the load generator, and with other work: figures are noisy",
        f"- **commit**: `{report.commit or commit_summary()}`; Python {platform.python_version()}",
        f"- **dataset**: {dataset.appointment_count:,} appointments, "
        f"{dataset.provider_count:,} providers ({len(dataset.providers)} used, "
        f"{len(dataset.specialties)} specialties)"
        + (
            f"; scale check also on {scale.appointment_count:,} appointments, "
            f"{scale.provider_count:,} providers ({len(scale.providers)} used)"
            if scale is not None
            else ""
        ),
        f"- **command**: `{config.command or 'run_bench(...)'}`",
        f"- **load**: {config.concurrency} connections, {config.duration_s:g} s per run "
        f"(first {config.warmup_s:g} s warm-up, not counted), at most "
        f"{config.max_requests:,} requests per run (writing scenarios: at most their prepared "
        f"set); {config.workers} uvicorn worker(s), {mixed_workers} for `mixed`; contention: "
        f"{config.contenders} clients at once on each of {config.contention_slots} slots; "
        f"{config.repeat} round(s), scenarios interleaved",
        *(
            [
                "- **database latency**: "
                + ", ".join(f"+{ms:g} ms" for ms in config.proxied_latencies)
                + " each way through the latency proxy, for "
                + ", ".join(f"`{n}`" for n in config.latency_scenarios if n in config.scenarios)
            ]
            if config.proxied_latencies
            else []
        ),
        *(
            [
                f"- **open loop**: `{OPEN_LOOP_SCENARIO}` at "
                + ", ".join(f"{rate:,.0f}" for rate in config.open_loop_rates)
                + f" requests/s, {min(config.concurrency, config.open_loop_max_connections)} "
                f"connections opened first, up to {config.open_loop_max_connections}"
            ]
            if config.open_loop_rates and OPEN_LOOP_SCENARIO in config.scenarios
            else []
        ),
        *(
            [
                "- **server settings** (an experiment, not the defaults): "
                + ", ".join(f"`{k}={v}`" for k, v in config.server_settings)
            ]
            if config.server_settings
            else []
        ),
        "",
        "Throughput and latencies count 2xx responses (and, for the contention scenarios, the "
        "expected 409s); errors list other statuses and transport errors separately. "
        "*Generator CPU* is the load generator's own CPU time (`getrusage`), *server CPU* "
        "that of the uvicorn process(es), *PostgreSQL CPU* that of the database backends "
        "serving the run (in-process baselines included), all over the whole run (warm-up "
        "included). *Cache hit rate* is from "
        "`/metrics` (`carebook_cache_requests_total`) after warm-up. Writing scenarios run on "
        "a scratch copy of the prepared database (`CREATE DATABASE … TEMPLATE`), one per run.",
        "",
    ]
    medians = median_table(report)
    table = {r.scenario: r for r in medians.values() if _is_main(r, main) and not r.skipped}
    found = verdicts(report)
    by_row: dict[str, list[Verdict]] = {}
    for verdict in found:
        by_row.setdefault(verdict.scenario, []).append(verdict)
    marks = {
        row: "; ".join(
            f"{v.short}: " + ("met" if v.met else "**missed**") for v in items if v.met is not None
        )
        or "-"
        for row, items in by_row.items()
    }
    title = f"Medians of {len(report.rounds)} rounds" if len(report.rounds) > 1 else "Results"
    lines += [f"#### {title}", "", _HEADER]
    for run in medians.values():
        if not run.variant:
            lines.append(_row(run, table, marks, main))
    lines.append("")
    lines += [
        "#### Targets (issue 8)",
        "",
        "| target | measured | status |",
        "| --- | --- | --- |",
        *(f"| {v.target} | {v.measured} | {v.status} |" for v in found),
        "",
    ]
    ratio_values = ratios(report)
    if ratio_values:
        rounds = len(report.rounds)
        lines += [
            "#### Throughput ratios (within each round)",
            "",
            "| ratio | " + " | ".join(f"round {n}" for n in range(1, rounds + 1)) + " | median |",
            "| --- |" + " ---: |" * (rounds + 1),
        ]
        for label, values in ratio_values:
            cells = [f"{v:.2f}" for v in values] + [""] * (rounds - len(values))
            lines.append(f"| {label} | {' | '.join(cells)} | **{_median(values):.2f}** |")
        lines.append("")
    rows = scale_rows(report)
    if rows:
        lines += [
            "#### Scale check (medians)",
            "",
            "| scenario | p50 ms small | p95 ms small | p50 ms large | p95 ms large "
            "| p50 ratio | p95 ratio | throughput small → large (req/s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in rows:
            a, b = r.small_run.result, r.large_run.result
            lines.append(
                f"| {r.scenario} ({r.small} → {r.large}) | {_ms(a.latency.p50)} "
                f"| {_ms(a.latency.p95)} | {_ms(b.latency.p50)} | {_ms(b.latency.p95)} "
                f"| {r.p50_ratio:.2f} | {r.p95_ratio:.2f} "
                f"| {a.throughput:,.0f} → {b.throughput:,.0f} |"
            )
        lines.append("")
    lines += render_latency(report, medians, marks)
    lines += render_open_loop(report, medians, marks)
    if report.previous is not None:
        lines += render_comparison(report.previous, results_document(report))
    if len(report.rounds) > 1:
        for number, runs in enumerate(report.rounds, start=1):
            by_latency = {ms: _main_runs(report, runs, ms) for ms in config.db_latencies_ms}
            lines += [
                f"#### Round {number}",
                "",
                _HEADER,
                *(_row(run, by_latency.get(run.db_latency_ms), None, main) for run in runs),
                "",
            ]
    profiled = [run for runs in report.rounds for run in runs if run.profile is not None]
    if profiled:
        lines += ["#### Where the server's time goes (py-spy, round 1)", ""]
        for run in profiled:
            assert run.profile is not None
            lines += render_profile(run.scenario, summarize_profile(run.profile))
    return "\n".join(lines).rstrip() + "\n"


def _latency_heading(ms: float) -> str:
    return "0 ms (direct)" if not ms else f"+{ms:g} ms each way"


def render_latency(
    report: BenchReport,
    medians: Mapping[tuple[str, str, float, float], ScenarioRun],
    marks: Mapping[str, str],
) -> list[str]:
    """The anti-pattern comparison at each database latency: within-round ratios, the
    scenarios side by side, and the full rows of the runs behind the proxy."""
    latencies = (0.0, *report.config.proxied_latencies)
    if len(latencies) < 2:
        return []
    main = report.dataset.label
    at = {
        ms: {
            r.scenario: r
            for r in medians.values()
            if r.dataset in ("", main)
            and r.open_loop is None
            and r.db_latency_ms == ms
            and not r.skipped
        }
        for ms in latencies
    }
    lines = [
        "#### Database latency: the anti-pattern comparison",
        "",
        "PostgreSQL reached through `load/latency_proxy.py`, a TCP proxy on 127.0.0.1 that "
        "delays every chunk in each direction (in order, without serialising them): each "
        "database round trip costs twice the delay more, as across availability zones. The "
        "0 ms column is the main, direct run. Ratios are medians of within-round ratios.",
        "",
        "| ratio | " + " | ".join(_latency_heading(ms) for ms in latencies) + " |",
        "| --- |" + " ---: |" * len(latencies),
    ]
    measured = {ms: dict(ratios(report, ms, LATENCY_RATIOS)) for ms in latencies}
    for label, _, _ in LATENCY_RATIOS:
        values = [measured[ms].get(label) for ms in latencies]
        cells = [f"{_median(v):.2f}" if v else "-" for v in values]
        if any(cell != "-" for cell in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| scenario | "
        + " | ".join(
            f"req/s {h} | p50 ms {h} | p99 ms {h}" for h in map(_latency_heading, latencies)
        )
        + " |",
        "| --- |" + " ---: |" * (3 * len(latencies)),
    ]
    for name in LATENCY_SCENARIOS:
        if not any(name in at[ms] for ms in latencies[1:]):
            continue
        cells = []
        for ms in latencies:
            run = at[ms].get(name)
            if run is None:
                cells += ["-", "-", "-"]
            else:
                r = run.result
                cells += [f"{r.throughput:,.0f}", _ms(r.latency.p50), _ms(r.latency.p99)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for ms in latencies[1:]:
        lines += [f"Runs at {_latency_heading(ms)} (medians):", "", _HEADER]
        lines += [_row(run, at[ms], marks, main) for run in at[ms].values()]
        lines.append("")
    return lines


def render_open_loop(
    report: BenchReport,
    medians: Mapping[tuple[str, str, float, float], ScenarioRun],
    marks: Mapping[str, str],
) -> list[str]:
    """The open-loop runs: latency from the scheduled time, and what the generator did."""
    runs = [r for r in medians.values() if r.open_loop is not None and not r.skipped]
    if not runs:
        return []
    late_ms = OpenLoopPlan(port=1, rate=1).late_ms
    lines = [
        f"#### Open loop: `{OPEN_LOOP_SCENARIO}` at constant arrival rates",
        "",
        "Request *n* is scheduled *n* / rate seconds after the start, whatever the server does, "
        "and its latency runs from that scheduled time (an HDR histogram), so queueing in the "
        "server or in the generator counts, where a closed loop would slow down and hide it. "
        "*Service p99* is from the write to the response (what a closed loop measures). A "
        f"request is *late* when written more than {late_ms:g} ms after its time; it *waited* "
        "when every connection was busy and no more could be opened; it is *dropped* when it "
        "was still waiting at the end of the run (never sent). Counts are over all rounds.",
        "",
        "| rate (req/s) | workers | achieved (req/s) | p50 ms | p95 ms | p99 ms | max ms "
        "| service p99 ms | send lag p99 ms | errors | scheduled | late | waited | dropped "
        "| connections (first → most) | target |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: "
        "| ---: | ---: | --- | --- |",
    ]
    for run in runs:
        o, r = run.open_loop, run.result
        assert o is not None
        lines.append(
            f"| {o.rate:,.0f} | {run.workers} | {r.throughput:,.0f} | {_ms(r.latency.p50)} "
            f"| {_ms(r.latency.p95)} | {_ms(r.latency.p99)} | {_ms(r.latency.max)} "
            f"| {_ms(o.service.p99)} | {_ms(o.send_lag.p99)} | {r.error_summary()} "
            f"| {o.scheduled:,} | {o.late:,} | {o.waited:,} | {o.dropped:,} "
            f"| {o.initial_connections} → {o.peak_connections} "
            f"| {marks.get(_label(run, report.dataset.label), '-')} |"
        )
    lines.append("")
    return lines


# --- results files and the before/after table ----------------------------------------------------


def _run_figures(run: ScenarioRun) -> dict[str, Any]:
    r = run.result
    figures: dict[str, Any] = {
        "scenario": run.scenario,
        "dataset": run.dataset,
        "db_latency_ms": run.db_latency_ms,
        "workers": run.workers,
        "concurrency": r.concurrency,
        "requests": r.requests,
        "throughput": round(r.throughput, 1),
        "p50_ms": round(r.latency.p50, 2),
        "p95_ms": round(r.latency.p95, 2),
        "p99_ms": round(r.latency.p99, 2),
        "max_ms": round(r.latency.max, 2),
        "errors": r.errors,
        "server_cpu_s": run.server_cpu_s,
        "database_cpu_s": run.database_cpu_s,
        "cache_hit_rate": run.cache_hit_rate,
    }
    if run.open_loop is not None:
        o = run.open_loop
        figures["open_loop"] = {
            "rate": o.rate,
            "scheduled": o.scheduled,
            "late": o.late,
            "waited": o.waited,
            "dropped": o.dropped,
            "initial_connections": o.initial_connections,
            "peak_connections": o.peak_connections,
            "service_p99_ms": round(o.service.p99, 2),
            "send_lag_p99_ms": round(o.send_lag.p99, 2),
        }
    if run.proxy is not None:
        figures["proxy"] = asdict(run.proxy)
    return figures


def results_document(report: BenchReport) -> dict[str, Any]:
    """The medians as JSON (`--results`): runs by their report label, the within-round
    ratios (medians) by database latency, and the targets."""
    medians = median_table(report)
    main = report.dataset.label
    latencies = (0.0, *report.config.proxied_latencies)
    return {
        "format": RESULTS_FORMAT,
        "label": f"run of {report.started:%Y-%m-%d %H:%M} UTC",
        "started": report.started.isoformat(),
        "commit": report.commit,
        "command": report.config.command,
        "rounds": len(report.rounds),
        "dataset": {
            "label": main,
            "appointments": report.dataset.appointment_count,
            "providers": report.dataset.provider_count,
        },
        "runs": {
            _label(run, main): _run_figures(run) for run in medians.values() if not run.skipped
        },
        "ratios": {
            f"{ms:g}": {
                label: round(_median(values), 3)
                for label, values in ratios(report, ms, RATIOS if not ms else LATENCY_RATIOS)
            }
            for ms in latencies
        },
        "targets": [
            {"target": v.target, "measured": v.measured, "met": v.met} for v in verdicts(report)
        ],
    }


def write_results(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def load_results(path: Path) -> dict[str, Any]:
    """A results file of `--results` (or a transcribed one), checked for its format."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or document.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not a {RESULTS_FORMAT} file")
    return document


def _change(before: float | None, after: float | None, *, higher_is_better: bool) -> str:
    if before is None or after is None or not before:
        return "-"
    change = (after / before - 1) * 100
    better = change > 0 if higher_is_better else change < 0
    if abs(change) < 0.5:
        return "±0 %"
    if after / before >= 2 or before / after >= 2:
        factor = after / before if after > before else before / after
        text = f"{factor:.1f}x {'more' if after > before else 'less'}"
    else:
        text = f"{change:+.0f} %"
    return f"{text} ({'better' if better else 'worse'})"


def _figure(run: Mapping[str, Any] | None, name: str) -> float | None:
    if run is None or run.get(name) is None:
        return None
    return float(run[name])


def _pair(before: float | None, after: float | None, fmt: str = "{:,.0f}") -> str:
    def text(value: float | None) -> str:
        if value is None:
            return "-"
        return _ms(value) if fmt == "ms" else fmt.format(value)

    return f"{text(before)} → {text(after)}"


def render_comparison(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Before/after: every run label of either file, throughput and latency percentiles,
    then the within-round ratios at each database latency."""
    before_runs: Mapping[str, Any] = previous.get("runs", {})
    after_runs: Mapping[str, Any] = current.get("runs", {})
    labels = list(after_runs) + [label for label in before_runs if label not in after_runs]
    lines = [
        f"#### Before / after: {previous.get('label', 'the previous run')} → this run",
        "",
        f"Before: commit `{previous.get('commit') or '?'}`, {previous.get('rounds', '?')} "
        f"round(s), {previous.get('dataset', {}).get('label', '?')} dataset. Medians; "
        "*-*: not measured in that run.",
        "",
        "| scenario | throughput (req/s) | change | p50 ms | p95 ms | p99 ms | p99 change "
        "| errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for label in labels:
        a, b = before_runs.get(label), after_runs.get(label)
        throughput = (_figure(a, "throughput"), _figure(b, "throughput"))
        lines.append(
            f"| {label} "
            f"| {_pair(*throughput)} "
            f"| {_change(*throughput, higher_is_better=True)} "
            f"| {_pair(_figure(a, 'p50_ms'), _figure(b, 'p50_ms'), 'ms')} "
            f"| {_pair(_figure(a, 'p95_ms'), _figure(b, 'p95_ms'), 'ms')} "
            f"| {_pair(_figure(a, 'p99_ms'), _figure(b, 'p99_ms'), 'ms')} "
            f"| {_change(_figure(a, 'p99_ms'), _figure(b, 'p99_ms'), higher_is_better=False)} "
            f"| {_pair(_figure(a, 'errors'), _figure(b, 'errors'))} |"
        )
    before_ratios: Mapping[str, Mapping[str, float]] = previous.get("ratios", {})
    after_ratios: Mapping[str, Mapping[str, float]] = current.get("ratios", {})
    rows = []
    for ms in sorted(set(before_ratios) | set(after_ratios), key=float):
        a_map, b_map = before_ratios.get(ms, {}), after_ratios.get(ms, {})
        for label in list(b_map) + [x for x in a_map if x not in b_map]:
            heading = "" if float(ms) == 0 else f" (database +{ms} ms each way)"
            rows.append(
                f"| {label}{heading} | {_pair(a_map.get(label), b_map.get(label), '{:.2f}')} |"
            )
    if rows:
        lines += ["", "| ratio (median within rounds) | before → after |", "| --- | ---: |", *rows]

    def targets(document: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        return {t["target"]: t for t in document.get("targets", [])}

    def status(target: Mapping[str, Any] | None) -> str:
        if target is None or target.get("met") is None:
            return "-"
        return f"{target['measured']} ({'met' if target['met'] else 'missed'})"

    before_targets, after_targets = targets(previous), targets(current)
    names = list(after_targets) + [t for t in before_targets if t not in after_targets]
    judged = [
        f"| {name} | {status(before_targets.get(name))} | {status(after_targets.get(name))} |"
        for name in names
        if status(before_targets.get(name)) != "-" or status(after_targets.get(name)) != "-"
    ]
    if judged:
        lines += ["", "| target | before | after |", "| --- | --- | --- |", *judged]
    lines.append("")
    return lines


@dataclass(frozen=True)
class ProfileSummary:
    samples: int
    self_by_package: list[tuple[str, int]]  # where the sampled frame itself was
    inclusive_by_package: list[tuple[str, int]]  # stacks that pass through the package
    self_by_function: list[tuple[str, int]]


def _package(frame: str) -> str:
    """`execute (sqlalchemy/engine/base.py:1)` -> `sqlalchemy`; app code -> `app/<domain>`."""
    location = frame.rsplit(" (", 1)[-1].rstrip(")")
    path = location.rsplit(":", 1)[0]
    parts = path.split("/")
    if parts[0] in {"app", "load", "workers"} and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0]


def summarize_profile(path: Path, top: int = 10) -> ProfileSummary:
    """Self and inclusive sample counts by package, and the hottest functions, from py-spy's
    raw (collapsed-stack) output."""
    samples = 0
    own: dict[str, int] = {}
    through: dict[str, int] = {}
    functions: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if " (" in f and not f.startswith("process ")]
        if not frames:
            continue
        samples += count
        leaf = frames[-1]
        own[_package(leaf)] = own.get(_package(leaf), 0) + count
        functions[leaf] = functions.get(leaf, 0) + count
        for package in {_package(frame) for frame in frames}:
            through[package] = through.get(package, 0) + count

    def ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(counts.items(), key=lambda item: -item[1])[:top]

    return ProfileSummary(samples, ranked(own), ranked(through), ranked(functions))


def render_profile(scenario: str, summary: ProfileSummary) -> list[str]:
    def share(count: int) -> str:
        return f"{count / summary.samples * 100:.0f} %" if summary.samples else "-"

    own = ", ".join(f"{name} {share(n)}" for name, n in summary.self_by_package)
    through = ", ".join(f"{name} {share(n)}" for name, n in summary.inclusive_by_package)
    hottest = ", ".join(f"`{name}` {share(n)}" for name, n in summary.self_by_function[:5])
    return [
        f"- **{scenario}** ({summary.samples} samples of the GIL holder at 100 Hz)",
        f"  - self time by package: {own}",
        f"  - stacks through package: {through}",
        f"  - hottest frames: {hottest}",
        "",
    ]


def write_report(path: Path, section: str) -> None:
    """Put `section` between the runner's markers in `path`, keeping everything else."""
    block = f"{BEGIN_MARK}\n{section}{END_MARK}\n"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Benchmarks\n\n{block}")
        return
    text = path.read_text()
    start, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(END_MARK) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m load.bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--database-url", required=True, help="a migrated, seeded database")
    parser.add_argument("--redis-url", required=True, help="the Redis the API uses (its own db)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted")
    parser.add_argument("--concurrency", type=int, default=64, help="connections")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="per run")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="repeatable; default: all, in the order " + ", ".join(SCENARIOS),
    )
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds (medians)")
    parser.add_argument("--report", type=Path, help="Markdown file to update, e.g. docs/...")
    parser.add_argument(
        "--profile-dir", type=Path, help="py-spy the server in round 1, raw stacks here"
    )
    parser.add_argument(
        "--mixed-workers",
        type=int,
        help="uvicorn workers of the mixed scenario (default: --workers)",
    )
    parser.add_argument(
        "--contenders", type=int, default=100, help="clients on one slot at once (contention)"
    )
    parser.add_argument(
        "--contention-slots", type=int, default=5, help="slots fought over, one burst each"
    )
    parser.add_argument(
        "--scale-database-url",
        help="a larger dataset: " + ", ".join(SCALE_SCENARIOS) + " run on it too (scale check)",
    )
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="CAREBOOK_NAME=VALUE",
        help="repeatable: a setting for the Carebook servers, for experiments "
        "(e.g. CAREBOOK_DB_POOL_PRE_PING=false); the report's command shows it",
    )
    parser.add_argument(
        "--db-latency-ms",
        type=_latencies,
        default=(0.0,),
        metavar="MS[,MS...]",
        help="e.g. 0,0.5: the anti-pattern comparisons again with each direction to PostgreSQL "
        "delayed by each value > 0 (a proxy on 127.0.0.1); the main run is always direct",
    )
    parser.add_argument(
        "--latency-scenario",
        action="append",
        choices=LATENCY_SCENARIOS,
        help="repeatable: what runs at the database latencies (default: all of "
        + ", ".join(LATENCY_SCENARIOS)
        + ", as far as --scenario selects them)",
    )
    parser.add_argument(
        "--open-loop-rates",
        type=_rates,
        default=(),
        metavar="RATE[,RATE...]",
        help=f"e.g. 500,1000: `{OPEN_LOOP_SCENARIO}` also at these constant arrival rates "
        "(requests/s), latency from the scheduled time",
    )
    parser.add_argument(
        "--open-loop-max-connections",
        type=int,
        default=OPEN_LOOP_MAX_CONNECTIONS,
        help="connections the open loop may open when all are busy (it starts with --concurrency)",
    )
    parser.add_argument("--results", type=Path, help="write the medians here as JSON")
    parser.add_argument(
        "--compare",
        type=Path,
        help="a previous run's results JSON (e.g. load/results/2026-12-01.json): the report "
        "adds a before/after table",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, not minutes: 2 s, 4 connections, 400 max, 20 contenders on 2 slots",
    )
    args = parser.parse_args(argv)
    settings = []
    for item in args.server_setting:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("CAREBOOK_"):
            parser.error(f"--server-setting wants CAREBOOK_NAME=VALUE, not {item!r}")
        settings.append((name, value))
    values: dict[str, float] = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "max_requests": args.max_requests,
        "contenders": args.contenders,
        "contention_slots": args.contention_slots,
    }
    if args.smoke:
        values.update(SMOKE)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "load.bench", *(redact(arg) for arg in raw_argv)])
    config = BenchConfig(
        database_url=args.database_url,
        redis_url=args.redis_url,
        workers=args.workers,
        duration_s=float(values["duration_s"]),
        warmup_s=float(values["warmup_s"]),
        concurrency=int(values["concurrency"]),
        max_requests=int(values["max_requests"]),
        scenarios=tuple(args.scenario or SCENARIOS),
        repeat=1 if args.smoke else max(1, args.repeat),
        command=command,
        profile_dir=args.profile_dir,
        mixed_workers=args.mixed_workers,
        contenders=int(values["contenders"]),
        contention_slots=max(1, int(values["contention_slots"])),
        scale_database_url=args.scale_database_url,
        server_settings=tuple(settings),
        db_latencies_ms=args.db_latency_ms,
        latency_scenarios=tuple(args.latency_scenario or LATENCY_SCENARIOS),
        open_loop_rates=args.open_loop_rates,
        open_loop_max_connections=args.open_loop_max_connections,
        compare=args.compare,
        results=args.results,
    )
    config.plan(0)  # validates the bounds before anything starts
    config.burst(0, frozenset())
    for rate in config.open_loop_rates:
        config.open_loop(0, rate)
    try:
        if config.proxied_latencies:
            via_proxy(config.database_url, 1)
        if config.compare is not None:
            load_results(config.compare)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    return config, args.report


def _numbers(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


def _latencies(text: str) -> tuple[float, ...]:
    values = _numbers(text)
    if any(value < 0 for value in values):
        raise argparse.ArgumentTypeError("a latency cannot be negative")
    return tuple(sorted({0.0, *values}))


def _rates(text: str) -> tuple[float, ...]:
    values = _numbers(text)
    if any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError("a rate must be positive")
    return tuple(dict.fromkeys(values))


async def _run_until_signal(config: BenchConfig) -> BenchReport:
    """`run_bench`, cancelled cleanly (servers stopped) on SIGTERM as on Ctrl-C."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    with suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_bench(config)
    finally:
        with suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> None:
    config, report_path = parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            report = runner.run(_run_until_signal(config))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _say("interrupted: servers stopped, no report written")
        raise SystemExit(130) from None
    section = render_report(report)
    print(section)
    if report_path is not None:
        write_report(report_path, section)
        _say(f"report written to {report_path}")
    if config.results is not None:
        write_results(config.results, results_document(report))
        _say(f"results written to {config.results}")


if __name__ == "__main__":
    main()
