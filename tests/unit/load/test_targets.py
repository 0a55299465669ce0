"""The targets of issue 8 as the runner judges them (load.targets): the complete run of
2026-12-07 rebuilt from its results file, every verdict pinned in order with its short label and
shortfall, and the rows a partial run gives (not measured, left out, several latencies)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from load.client import LatencySummary, LoadResult, OpenLoopResult
from load.machine import REPO_ROOT
from load.runs import BenchConfig, BenchReport, ScenarioRun
from load.scenarios import Contention, Dataset
from load.targets import verdicts

RESULTS = REPO_ROOT / "load" / "results" / "2026-12-07.json"
ONE_EACH = (1,) * 15
# What the results file keeps only as text: the contention runs' slots.
CONTENTION = {
    "contention": Contention(ONE_EACH, ONE_EACH),
    "contention @ db +0.5 ms": Contention(ONE_EACH, ONE_EACH),
    "naive-contention": Contention(
        (2, 13, 15, 15, 12, 1, 15, 13, 15, 13, 1, 15, 13, 13, 15),
        (2, 13, 15, 15, 12, 1, 15, 13, 15, 13, 1, 15, 13, 13, 15),
    ),
}

Row = tuple[str, str, str, bool | None, str, str]  # target, scenario, measured, met, ...


def _latency(figures: dict[str, Any]) -> LatencySummary:
    return LatencySummary(
        figures["p50_ms"], figures["p95_ms"], figures["p99_ms"], figures["max_ms"], 0.0
    )


def _run(label: str, figures: dict[str, Any]) -> ScenarioRun:
    errors = figures["errors"]
    result = LoadResult(
        concurrency=figures["concurrency"],
        requests=figures["requests"],
        ok=figures["requests"] - errors,
        elapsed_s=12.0,
        throughput=figures["throughput"],
        latency=_latency(figures),
        status_errors={503: errors} if errors else {},
        transport_errors={},
        warmup_requests=0,
        cpu_s=1.0,
        mean_body_bytes=100.0,
    )
    open_loop = None
    if "open_loop" in figures:
        o = figures["open_loop"]
        lag = LatencySummary(0.0, 0.0, o["send_lag_p99_ms"], 0.0, 0.0)
        service = LatencySummary(0.0, 0.0, o["service_p99_ms"], 0.0, 0.0)
        open_loop = OpenLoopResult(
            o["rate"],
            result,
            o["scheduled"],
            o["dropped"],
            o["late"],
            o["waited"],
            o["initial_connections"],
            o["peak_connections"],
            lag,
            service,
        )
    return ScenarioRun(
        figures["scenario"],
        figures["workers"],
        result,
        figures["server_cpu_s"],
        database_cpu_s=figures["database_cpu_s"],
        cache_hit_rate=figures["cache_hit_rate"],
        dataset=figures["dataset"],
        contention=CONTENTION.get(label),
        db_latency_ms=figures["db_latency_ms"],
        open_loop=open_loop,
    )


def _complete_run() -> tuple[BenchReport, dict[str, Any]]:
    """One round of the run's medians (so its ratios are ratios of medians, not the medians
    of the three rounds' ratios the file holds)."""
    document = json.loads(RESULTS.read_text())
    config = BenchConfig(
        database_url="postgresql://x/y",
        redis_url="redis://x/9",
        scale_database_url="postgresql://x/z",
        db_latencies_ms=(0.0, 0.5),
        open_loop_rates=(500.0, 1000.0),
    )
    size = document["dataset"]
    report = BenchReport(
        config=config,
        dataset=Dataset((), (), size["appointments"], size["providers"], date(2026, 12, 7)),
        started=datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
        scale_dataset=Dataset((), (), 10_000_000, 1000, date(2026, 12, 7)),
    )
    report.rounds.append([_run(label, run) for label, run in document["runs"].items()])
    return report, document


def _rows(report: BenchReport) -> list[Row]:
    return [
        (v.target, v.scenario, v.measured, v.met, v.shortfall, v.short) for v in verdicts(report)
    ]


ANTI = "its anti-pattern's throughput"
COMPLETE_RUN: list[Row] = [
    (
        "warm availability ≥ 50 % of the constant endpoint",
        "availability-warm",
        "0.38",
        False,
        "24 % short",
        "≥ 0.5 x constant",
    ),
    (
        "cold availability ≥ 60 % of the raw asyncpg query",
        "availability-cold",
        "0.52",
        False,
        "13 % short",
        "≥ 0.6 x raw",
    ),
    (
        "bookings ≥ 25 % of the raw transaction",
        "booking",
        "0.32",
        True,
        "-28 % short",
        "≥ 0.25 x raw",
    ),
    (
        "bookings p99 < 50 ms (at 64 clients)",
        "booking",
        "p99 1041 ms at 64 clients",
        False,
        "20.8x over",
        "p99 < 50 ms",
    ),
    (
        "contention: exactly one winner per slot",
        "contention",
        "201s per slot [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], rows [1, 1, 1, 1, 1, 1, "
        "1, 1, 1, 1, 1, 1, 1, 1, 1]",
        True,
        "not exactly one",
        "one winner per slot",
    ),
    (
        "contention p99 < 100 ms",
        "contention",
        "p99 623 ms at 100 clients",
        False,
        "6.2x over",
        "p99 < 100 ms",
    ),
    (
        "mixed ≥ 1,500 requests/s",
        "mixed",
        "570 req/s with 2 worker(s)",
        False,
        "2.6x short",
        "≥ 1,500 req/s",
    ),
    ("mixed p95 ≤ 40 ms", "mixed", "p95 269 ms at 64 clients", False, "6.7x over", "p95 ≤ 40 ms"),
    ("mixed p99 ≤ 100 ms", "mixed", "p99 309 ms at 64 clients", False, "3.1x over", "p99 ≤ 100 ms"),
    ("mixed: no errors", "mixed", "0", True, "0 errors", "no errors"),
    (
        "listing ≥ 20x its anti-pattern's throughput",
        "listing",
        "2.84",
        False,
        "7.0x short",
        "≥ 20 x anti-pattern",
    ),
    (
        "availability-cold ≥ 20x its anti-pattern's throughput",
        "availability-cold",
        "1.42",
        False,
        "14.1x short",
        "≥ 20 x anti-pattern",
    ),
    (
        "contention ≥ 20x its anti-pattern's throughput",
        "contention",
        "0.32",
        False,
        "62.0x short",
        "≥ 20 x anti-pattern",
    ),
    (
        "listing ≥ 20x its anti-pattern's throughput, database +0.5 ms each way",
        "listing @ db +0.5 ms",
        "5.15",
        False,
        "3.9x short",
        "≥ 20 x anti-pattern",
    ),
    (
        "availability-cold ≥ 20x its anti-pattern's throughput, database +0.5 ms each way",
        "availability-cold @ db +0.5 ms",
        "1.35",
        False,
        "14.9x short",
        "≥ 20 x anti-pattern",
    ),
    (
        "contention ≥ 20x its anti-pattern's throughput, database +0.5 ms each way",
        "contention @ db +0.5 ms",
        "0.39",
        False,
        "51.9x short",
        "≥ 20 x anti-pattern",
    ),
    (
        "mixed at 500 requests/s (open loop): p95 ≤ 40 ms, p99 ≤ 100 ms, rate kept, nothing "
        "dropped",
        "mixed @ open loop 500/s",
        "p95 1235 ms, p99 2519 ms, 497 req/s achieved, 2,133 dropped, errors 112 (HTTP 503 x112)",
        False,
        "p95 30.9x over; p99 25.2x over; 2,133 dropped; 112 errors",
        "p95 ≤ 40 ms, p99 ≤ 100 ms, rate kept",
    ),
    (
        "mixed at 1,000 requests/s (open loop): p95 ≤ 40 ms, p99 ≤ 100 ms, rate kept, nothing "
        "dropped",
        "mixed @ open loop 1000/s",
        "p95 7246 ms, p99 8348 ms, 398 req/s achieved, 19,792 dropped, errors 140 (HTTP 503 x140)",
        False,
        "p95 181.1x over; p99 83.5x over; achieved 2.5x short; 19,792 dropped; 140 errors",
        "p95 ≤ 40 ms, p99 ≤ 100 ms, rate kept",
    ),
    (
        "check-then-insert lets double bookings through (counted, not a target)",
        "naive-contention",
        "156 double bookings over 15 slots (rows per slot [2, 13, 15, 15, 12, 1, 15, 13, 15, "
        "13, 1, 15, 13, 13, 15])",
        None,
        "",
        "check-then-insert lets double bookings through (counted, not a target)",
    ),
    (
        "availability-cold at 10 M ≤ 1.5x 100 k (p50 and p95)",
        "availability-cold @ 10 M",
        "p50 x 0.99, p95 x 0.95",
        True,
        "-34 % over",
        "≤ 1.5 x smaller dataset",
    ),
    (
        "listing at 10 M ≤ 1.5x 100 k (p50 and p95)",
        "listing @ 10 M",
        "p50 x 1.04, p95 x 1.05",
        True,
        "-30 % over",
        "≤ 1.5 x smaller dataset",
    ),
]


def test_the_complete_run_is_judged_as_its_results_file_says() -> None:
    report, document = _complete_run()
    found = verdicts(report)
    assert [(v.target, v.met) for v in found] == [
        (t["target"], t["met"]) for t in document["targets"]
    ]
    # Ratios aside (medians of rounds here, not of within-round ratios), and the throughput of
    # `mixed` (the file keeps 569.5 req/s: it prints as 570), the same figures.
    kept = [
        i
        for i, v in enumerate(found)
        if "%" not in v.target and ANTI not in v.target and v.target != "mixed ≥ 1,500 requests/s"
    ]
    assert [found[i].measured for i in kept] == [document["targets"][i]["measured"] for i in kept]


def test_every_verdict_of_the_complete_run_is_pinned() -> None:
    report, _ = _complete_run()
    assert _rows(report) == COMPLETE_RUN


PARTIAL_RUN = [
    ("warm availability ≥ 50 % of the constant endpoint", "availability-warm", "0.38", False),
    ("cold availability ≥ 60 % of the raw asyncpg query", "availability-cold", "-", None),
    ("bookings ≥ 25 % of the raw transaction", "booking", "-", None),
    ("bookings p99 < 50 ms (at 64 clients)", "booking", "p99 1041 ms at 64 clients", False),
    ("contention: exactly one winner per slot", "contention", "-", None),
    ("contention p99 < 100 ms", "contention", "-", None),
    ("mixed ≥ 1,500 requests/s", "mixed", "-", None),
    ("mixed p95 ≤ 40 ms", "mixed", "-", None),
    ("mixed p99 ≤ 100 ms", "mixed", "-", None),
    ("listing ≥ 20x its anti-pattern's throughput", "listing", "2.84", False),
    ("availability-cold ≥ 20x its anti-pattern's throughput", "availability-cold", "-", None),
    ("contention ≥ 20x its anti-pattern's throughput", "contention", "-", None),
    (
        "listing ≥ 20x its anti-pattern's throughput, database +0.5 ms each way",
        "listing @ db +0.5 ms",
        "5.15",
        False,
    ),
    (
        "availability-cold ≥ 20x its anti-pattern's throughput, database +0.5 ms each way",
        "availability-cold @ db +0.5 ms",
        "-",
        None,
    ),
    (
        "contention ≥ 20x its anti-pattern's throughput, database +0.5 ms each way",
        "contention @ db +0.5 ms",
        "-",
        None,
    ),
    (
        "listing ≥ 20x its anti-pattern's throughput, database +1 ms each way",
        "listing @ db +1 ms",
        "5.15",
        False,
    ),
    (
        "availability-cold ≥ 20x its anti-pattern's throughput, database +1 ms each way",
        "availability-cold @ db +1 ms",
        "-",
        None,
    ),
    (
        "contention ≥ 20x its anti-pattern's throughput, database +1 ms each way",
        "contention @ db +1 ms",
        "-",
        None,
    ),
]


def test_a_partial_run_at_two_latencies_keeps_the_order_and_the_gaps() -> None:
    report, _ = _complete_run()
    keep = {"constant", "availability-warm", "booking", "listing", "naive-listing"}
    (runs,) = report.rounds
    report.rounds = [
        [
            run
            for run in runs
            if run.scenario in keep and run.dataset == "100 k" and run.open_loop is None
        ]
    ]
    latency = [r for r in report.rounds[0] if r.db_latency_ms == 0.5]
    report.rounds[0] += [replace(r, db_latency_ms=1.0) for r in latency]
    report.config = replace(report.config, db_latencies_ms=(0.0, 0.5, 1.0))
    report.scale_dataset = None
    assert [row[:4] for row in _rows(report)] == PARTIAL_RUN


def test_an_empty_run_measures_nothing() -> None:
    report, _ = _complete_run()
    report.rounds = [[]]
    report.config = replace(report.config, db_latencies_ms=(0.0,), open_loop_rates=())
    assert [(v.target, v.scenario, v.measured, v.met) for v in verdicts(report)] == [
        ("warm availability ≥ 50 % of the constant endpoint", "availability-warm", "-", None),
        ("cold availability ≥ 60 % of the raw asyncpg query", "availability-cold", "-", None),
        ("bookings ≥ 25 % of the raw transaction", "booking", "-", None),
        ("bookings p99 < 50 ms (at 64 clients)", "booking", "-", None),
        ("contention: exactly one winner per slot", "contention", "-", None),
        ("contention p99 < 100 ms", "contention", "-", None),
        ("mixed ≥ 1,500 requests/s", "mixed", "-", None),
        ("mixed p95 ≤ 40 ms", "mixed", "-", None),
        ("mixed p99 ≤ 100 ms", "mixed", "-", None),
        (f"listing ≥ 20x {ANTI}", "listing", "-", None),
        (f"availability-cold ≥ 20x {ANTI}", "availability-cold", "-", None),
        (f"contention ≥ 20x {ANTI}", "contention", "-", None),
    ]
