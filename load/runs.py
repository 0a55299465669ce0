"""What a benchmark run is made of: its configuration, one scenario's run, the report of
all rounds, and how a run is labelled in the tables and the results file."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from load.client import LoadPlan, LoadResult, OpenLoopPlan, OpenLoopResult
from load.latency_proxy import ProxyStats
from load.scenarios import SCENARIOS, Contention, Dataset, Scenario

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
BURST_LIMIT_S = 30.0  # one contention burst (every client once) must end within this


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
class Priming:
    """The untimed pass that fills the cache: each distinct request once."""

    requests: int
    seconds: float
    errors: int
    realigned: bool  # waited for the next clock minute and primed again


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


def run_label(run: ScenarioRun, main: str) -> str:
    """`listing`, `listing @ 10 M`, `listing @ db +0.5 ms`, `mixed @ open loop 500/s`."""
    parts = [] if run.dataset in ("", main) else [run.dataset]
    if run.variant:
        parts.append(run.variant)
    return f"{run.scenario} @ {', '.join(parts)}" if parts else run.scenario


def is_main(run: ScenarioRun, main: str) -> bool:
    """A run of the main dataset, database direct, closed loop."""
    return run.dataset in ("", main) and not run.variant


def millis(value: float) -> str:
    """Milliseconds as every table prints them: one decimal below 100."""
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"
