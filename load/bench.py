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
The database must already be migrated and seeded; see load/README.md, which also says what
each of the runner's modules beside this one does.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from load.client import new_event_loop
from load.latency_proxy import ProxyProcess, proxy_process
from load.machine import REPO_ROOT, commit_summary, machine_summary
from load.measure import database_port, run_scenario, via_proxy
from load.report import BEGIN_MARK, END_MARK, render_report, write_report
from load.results import load_results, results_document, write_results
from load.runs import (
    LATENCY_SCENARIOS,
    OPEN_LOOP_MAX_CONNECTIONS,
    OPEN_LOOP_SCENARIO,
    BenchConfig,
    BenchReport,
)
from load.scenarios import SCALE_SCENARIOS, SCENARIOS, Dataset, load_dataset
from load.servers import server_command, server_env, serving

# What callers of `load.bench` from before the split into modules still import from here.
__all__ = [
    "BEGIN_MARK",
    "END_MARK",
    "REPO_ROOT",
    "BenchConfig",
    "BenchReport",
    "load_results",
    "main",
    "parse_args",
    "render_report",
    "results_document",
    "run_bench",
    "server_command",
    "server_env",
    "serving",
    "write_report",
    "write_results",
]


SMOKE = {
    "duration_s": 2.0,
    "warmup_s": 0.5,
    "concurrency": 4,
    "max_requests": 400,
    "contenders": 20,
    "contention_slots": 2,
}


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


def redact(url: str) -> str:
    """The URL with any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


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
