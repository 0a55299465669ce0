"""The benchmark runner: start the API, drive scenarios on 127.0.0.1, write the report.

    python -m load.bench --database-url URL --redis-url URL [--workers 1] [--duration 15]
        [--concurrency 64] [--max-requests N] [--scenario NAME ...] [--repeat 1]
        [--report docs/benchmarks.md] [--smoke]

For every scenario run a fresh uvicorn subprocess is started on a free port of 127.0.0.1 with
Carebook's production settings (or the constant-JSON baseline with the same uvicorn flags), the
runner waits for `/health/ready`, scrapes `/metrics` before and after the load to compute the
cache hit rate, and stops the server (SIGINT, then SIGKILL after a deadline) whatever happens.
With `--repeat N` all scenarios run in N interleaved rounds and the report quotes medians.
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
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from load.client import (
    LOOPBACK,
    LoadPlan,
    LoadResult,
    build_request,
    cycle_requests,
    fetch,
    new_event_loop,
    run_load,
)
from load.scenarios import SCENARIOS, Dataset, Scenario, load_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
APPS = {
    "carebook": "app.main:app_factory",
    "constant": "load.baselines.constant_app:app_factory",
}
CODE_PATHS = ("app", "load", "workers", "alembic", "pyproject.toml")  # what a run depends on
LOG_SCAN_BYTES = 2_000_000
_PROBLEM_LEVELS = {"warning", "error", "critical"}
BEGIN_MARK = "<!-- load.bench:begin -->"
END_MARK = "<!-- load.bench:end -->"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
PRIME_CONCURRENCY = 16
PRIME_LIMIT_S = 120.0
SMOKE = {"duration_s": 2.0, "warmup_s": 0.5, "concurrency": 4, "max_requests": 400}
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

    def plan(self, port: int) -> LoadPlan:
        return LoadPlan(
            port=port,
            concurrency=self.concurrency,
            duration_s=self.duration_s,
            max_requests=self.max_requests,
            warmup_s=self.warmup_s,
        )


@dataclass(frozen=True)
class ScenarioRun:
    scenario: str
    workers: int
    result: LoadResult
    server_cpu_s: float | None  # the uvicorn processes, load window (warm-up included)
    cache_hit_rate: float | None = None  # after warm-up; None when not measured
    priming: Priming | None = None
    within_one_minute: bool = True  # the timed run did not cross a clock minute
    profile: Path | None = None  # py-spy collapsed stacks, when profiled
    server_log: dict[str, int] = field(default_factory=dict)  # warnings/errors by message


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


# --- the server under test -------------------------------------------------------------------


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(config: BenchConfig, *, cache_enabled: bool) -> dict[str, str]:
    """The environment of the API process: the caller's, minus any CAREBOOK_*, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBOOK_")}
    env.update(
        {
            "CAREBOOK_DATABASE_URL": config.database_url,
            "CAREBOOK_REDIS_URL": config.redis_url,
            "CAREBOOK_ENVIRONMENT": "production",
            "CAREBOOK_JWT_SECRET": secrets.token_urlsafe(36),  # 48 characters
            "CAREBOOK_RATE_LIMIT_ENABLED": "false",
            "CAREBOOK_LOG_LEVEL": "WARNING",
            "CAREBOOK_CACHE_ENABLED": "true" if cache_enabled else "false",
        }
    )
    return env


def server_command(app: str, port: int, workers: int) -> list[str]:
    """The uvicorn command line, identical for Carebook and the baseline apart from the app."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
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


@dataclass
class Server:
    process: asyncio.subprocess.Process
    port: int
    log: IO[bytes]

    def log_tail(self, limit: int = 4000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:]

    def log_problems(self) -> dict[str, int]:
        """Warnings and errors the server logged so far, by message."""
        return log_problems(self.log_tail(LOG_SCAN_BYTES))


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
    app: str, config: BenchConfig, *, cache_enabled: bool, env: Mapping[str, str] | None = None
) -> AsyncIterator[Server]:
    """A uvicorn subprocess on a free 127.0.0.1 port, ready; always stopped on the way out."""
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _stop
    try:
        process = await asyncio.create_subprocess_exec(
            *server_command(app, port, config.workers),
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


async def run_scenario(
    scenario: Scenario,
    config: BenchConfig,
    dataset: Dataset,
    *,
    profile_to: Path | None = None,
) -> ScenarioRun:
    """Start the scenario's server, (prime it,) load it, measure it and stop it."""
    async with serving(
        APPS[scenario.target], config, cache_enabled=scenario.cache_enabled
    ) as server:
        requests = scenario.build(dataset, server.port)
        priming = (
            await _prime_within_minute(server.port, requests, config) if scenario.prime else None
        )
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
                    config.warmup_s,
                    config.duration_s - config.warmup_s,
                    profile_to,
                )
            )
        cpu_before = process_cpu_seconds(server.process.pid)
        minute_before = datetime.now(UTC).replace(second=0, microsecond=0)
        try:
            result = await run_load(config.plan(server.port), cycle_requests(requests))
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
        server_cpu = (
            cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
        )
        rate = None
        if cache:
            if after_warmup is not None and after_warmup.done() and not after_warmup.cancelled():
                with suppress(Exception):
                    before = after_warmup.result()
            rate = hit_rate(before, await scrape_cache(server.port, cache))
        problems = server.log_problems()
        return ScenarioRun(
            scenario.name,
            config.workers,
            result,
            server_cpu,
            cache_hit_rate=rate,
            priming=priming,
            within_one_minute=one_minute,
            profile=profile_to if profiled else None,
            server_log=problems,
        )


async def run_bench(config: BenchConfig, *, dataset: Dataset | None = None) -> BenchReport:
    """Every scenario of `config`, `config.repeat` rounds, interleaved."""
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
    for round_number in range(1, config.repeat + 1):
        runs = []
        for name in config.scenarios:
            _say(f"round {round_number}/{config.repeat}: {name} ...")
            profile_to = None
            if config.profile_dir is not None and round_number == 1:
                config.profile_dir.mkdir(parents=True, exist_ok=True)
                profile_to = config.profile_dir / f"{name}.txt"
            run = await run_scenario(SCENARIOS[name], config, report.dataset, profile_to=profile_to)
            _say(
                f"  {run.result.throughput:,.0f} req/s, p99 {run.result.latency.p99:.1f} ms, "
                f"errors {run.result.error_summary()}"
            )
            runs.append(run)
        report.rounds.append(runs)
    return report


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


_HEADER = (
    "| scenario | workers | concurrency | requests | throughput (req/s) | p50 ms | p95 ms "
    "| p99 ms | max ms | errors | generator CPU s | server CPU s | cache hit rate "
    "| body bytes | notes |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: "
    "| ---: | --- |"
)


def _notes(run: ScenarioRun) -> str:
    notes = []
    if run.priming is not None:
        primed = f"primed {run.priming.requests} requests in {run.priming.seconds:.1f} s"
        if run.priming.errors:
            primed += f" ({run.priming.errors} errors)"
        notes.append(primed)
    if run.priming is not None:
        notes.append("within one clock minute" if run.within_one_minute else "crossed a minute")
    if run.profile is not None:
        notes.append("py-spy attached")
    if run.server_log:
        ranked = sorted(run.server_log.items(), key=lambda item: -item[1])
        shown = ", ".join(f"{message!r} x{n}" for message, n in ranked[:3])
        more = f" and {len(ranked) - 3} more" if len(ranked) > 3 else ""
        notes.append(f"server logged {shown}{more}")
    return "; ".join(notes)


def _row(run: ScenarioRun) -> str:
    r = run.result
    cells = [
        run.scenario,
        str(run.workers),
        str(r.concurrency),
        f"{r.requests:,}",
        f"{r.throughput:,.0f}",
        _ms(r.latency.p50),
        _ms(r.latency.p95),
        _ms(r.latency.p99),
        _ms(r.latency.max),
        r.error_summary(),
        f"{r.cpu_s:.1f}",
        _cpu(run.server_cpu_s),
        _hit_rate(run.cache_hit_rate),
        f"{r.mean_body_bytes:,.0f}",
        _notes(run),
    ]
    return "| " + " | ".join(cells) + " |"


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def median_run(runs: Sequence[ScenarioRun]) -> ScenarioRun:
    """Column-wise medians of repeated runs of one scenario (errors: the sum)."""
    first = runs[0]
    results = [run.result for run in runs]
    status: dict[int, int] = {}
    transport: dict[str, int] = {}
    for result in results:
        for code, n in result.status_errors.items():
            status[code] = status.get(code, 0) + n
        for kind, n in result.transport_errors.items():
            transport[kind] = transport.get(kind, 0) + n
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
    )
    cpus = [run.server_cpu_s for run in runs if run.server_cpu_s is not None]
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
    return ScenarioRun(
        first.scenario,
        first.workers,
        result,
        _median(cpus) if cpus else None,
        cache_hit_rate=_median(rates) if rates else None,
        priming=priming,
        within_one_minute=all(run.within_one_minute for run in runs),
        server_log=logged,
    )


RATIOS = (
    ("availability-warm ÷ constant", "availability-warm", "constant"),
    ("availability-cold ÷ availability-warm", "availability-cold", "availability-warm"),
    ("search ÷ constant", "search", "constant"),
)


def ratios(report: BenchReport) -> list[tuple[str, list[float]]]:
    """Throughput ratios measured within each round (rounds missing a side are skipped)."""
    found = []
    for label, top, bottom in RATIOS:
        values = []
        for runs in report.rounds:
            by_name = {run.scenario: run.result.throughput for run in runs}
            if by_name.get(top) is not None and by_name.get(bottom):
                values.append(by_name[top] / by_name[bottom])
        if values:
            found.append((label, values))
    return found


def render_report(report: BenchReport) -> str:
    """The Markdown section the runner owns in docs/benchmarks.md."""
    config = report.config
    dataset = report.dataset
    lines = [
        f"## Run of {report.started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- **machine**: {report.machine or machine_summary()}; shared with PostgreSQL, Redis "
        "and the load generator, and with other work: figures are noisy",
        f"- **commit**: `{report.commit or commit_summary()}`; Python {platform.python_version()}",
        f"- **dataset**: {dataset.appointment_count:,} appointments, "
        f"{dataset.provider_count:,} providers ({len(dataset.providers)} used, "
        f"{len(dataset.specialties)} specialties)",
        f"- **command**: `{config.command or 'run_bench(...)'}`",
        f"- **load**: {config.concurrency} connections, {config.duration_s:g} s per run "
        f"(first {config.warmup_s:g} s warm-up, not counted), at most "
        f"{config.max_requests:,} requests per run; {config.workers} uvicorn worker(s); "
        f"{config.repeat} round(s), scenarios interleaved",
        "",
        "Throughput and latencies count 2xx responses only; errors list non-2xx statuses and "
        "transport errors separately. *Generator CPU* is the load generator's own CPU time "
        "(`getrusage`), *server CPU* that of the uvicorn process(es), both over the whole run. "
        "*Cache hit rate* is from `/metrics` (`carebook_cache_requests_total`) after warm-up.",
        "",
    ]
    if len(report.rounds) > 1:
        lines += [f"### Medians of {len(report.rounds)} rounds", "", _HEADER]
        for name in config.scenarios:
            runs = [run for runs in report.rounds for run in runs if run.scenario == name]
            if runs:
                lines.append(_row(median_run(runs)))
        lines.append("")
    found = ratios(report)
    if found:
        rounds = len(report.rounds)
        lines += [
            "### Throughput ratios (within each round)",
            "",
            "| ratio | " + " | ".join(f"round {n}" for n in range(1, rounds + 1)) + " | median |",
            "| --- |" + " ---: |" * (rounds + 1),
        ]
        for label, values in found:
            cells = [f"{v:.2f}" for v in values] + [""] * (rounds - len(values))
            lines.append(f"| {label} | {' | '.join(cells)} | **{_median(values):.2f}** |")
        lines.append("")
    for number, runs in enumerate(report.rounds, start=1):
        lines += [f"### Round {number}", "", _HEADER, *(_row(run) for run in runs), ""]
    profiled = [run for runs in report.rounds for run in runs if run.profile is not None]
    if profiled:
        lines += ["### Where the server's time goes (py-spy, round 1)", ""]
        for run in profiled:
            assert run.profile is not None
            lines += render_profile(run.scenario, summarize_profile(run.profile))
    return "\n".join(lines).rstrip() + "\n"


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
        "--smoke", action="store_true", help="seconds, not minutes: 2 s, 4 connections, 400 max"
    )
    args = parser.parse_args(argv)
    values: dict[str, float] = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "max_requests": args.max_requests,
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
    )
    config.plan(0)  # validates the bounds before anything starts
    return config, args.report


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


if __name__ == "__main__":
    main()
