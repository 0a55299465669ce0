"""Unit tests for the runner's preparation and report logic (load.prepare, load.bench): the
SQL parameter conversion, how bookings and contended slots are picked so that nothing collides,
and how the targets of issue 8 are judged and rendered."""

from __future__ import annotations

import itertools
import os
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from app.availability.repository import FREE_SLOTS_OF_PROVIDER
from load.bench import parse_args
from load.client import LatencySummary, LoadResult, OpenLoopResult
from load.latency_proxy import ProxyStats
from load.machine import REPO_ROOT, database_cpu_seconds, database_cpu_ticks, reaped_backend_ticks
from load.measure import database_port, via_proxy
from load.medians import LATENCY_RATIOS, median_run, ratios
from load.prepare import (
    FREE_SLOTS_PARAMS,
    FREE_SLOTS_SQL,
    Account,
    Slot,
    assign,
    contended_slots,
    positional,
)
from load.report import cpu_per_request, render_report
from load.results import load_results, render_comparison, results_document, write_results
from load.runs import BenchConfig, BenchReport, ScenarioRun
from load.scenarios import SCENARIOS, Contention, Dataset, route_present
from load.targets import verdicts

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
BASELINE = REPO_ROOT / "load" / "results" / "2026-12-01.json"


def test_named_parameters_become_numbered_ones_and_casts_stay() -> None:
    source = "SELECT :a, CAST(:b AS date), :a, 'it''s :x', now()::date -- the slot's :y\n, :c"
    sql, names = positional(source)
    assert sql == (
        "SELECT $1, CAST($2 AS date), $1, 'it''s :x', now()::date -- the slot's :y\n, $3"
    )
    assert names == ("a", "b", "c")
    # The API's own availability statement, ready for asyncpg.
    assert set(FREE_SLOTS_PARAMS) == {
        "provider_id",
        "from_date",
        "to_date",
        "earliest",
        "latest",
        "ignore_appointment_id",
    }
    assert ":provider_id" not in FREE_SLOTS_SQL
    assert f"${len(FREE_SLOTS_PARAMS)}" in FREE_SLOTS_SQL
    assert set(FREE_SLOTS_PARAMS) == set(FREE_SLOTS_OF_PROVIDER._bindparams)  # SQLAlchemy agrees


def _account(n: int) -> Account:
    return Account(uuid.UUID(int=n), f"patient{n:06d}@load.example.com", "patient", None)


def _slot(provider: int, minutes: int, length: int = 30) -> Slot:
    start = T0 + timedelta(minutes=minutes)
    return Slot(uuid.UUID(int=1000 + provider), start, start + timedelta(minutes=length))


def test_bookings_use_distinct_slots_and_never_overlap_for_one_patient() -> None:
    # Four providers with the same eight half-hour slots: 32 slots, many at the same time.
    slots = [_slot(p, 30 * k) for p in range(4) for k in range(8)]
    patients = [_account(1), _account(2)]
    busy = {patients[0].id: [(T0, T0 + timedelta(hours=1))]}  # holds 09:00-10:00 already
    bookings = assign(slots, patients, busy, count=100, seed=1)
    assert len({b.slot for b in bookings}) == len(bookings)  # distinct slots
    # Each patient can hold one visit per half hour, the first one not before 10:00.
    assert len(bookings) == 8 + 6
    for patient in patients:
        mine = sorted((b.slot.starts_at, b.slot.ends_at) for b in bookings if b.patient == patient)
        for (_, end), (start, _) in itertools.pairwise(mine):
            assert end <= start
    assert all(
        b.slot.starts_at >= T0 + timedelta(hours=1) for b in bookings if b.patient == patients[0]
    )
    assert len(assign(slots, patients, {}, count=5, seed=1)) == 5  # the count bounds it
    assert assign(slots, patients, {}, count=5, seed=1) == assign(
        slots, patients, {}, count=5, seed=1
    )  # reproducible


def test_contended_slots_are_free_for_every_contender_and_spread_over_providers() -> None:
    slots = [_slot(p, 30 * k) for p in range(3) for k in range(4)]
    patients = [_account(n) for n in range(1, 6)]
    busy = {patients[3].id: [(T0, T0 + timedelta(minutes=60))]}  # one of them is busy 9-10
    picked = contended_slots(slots, patients, busy, count=3, seed=2)
    assert len(picked) == 3
    assert len({s.provider_id for s in picked}) == 3  # one per provider while there are some
    assert all(s.starts_at >= T0 + timedelta(minutes=60) for s in picked)
    assert len(contended_slots(slots, patients, busy, count=10, seed=2)) == 6  # all that fit


def _result(throughput: float, p95: float, p99: float, **extra: object) -> LoadResult:
    values: dict[str, object] = {
        "concurrency": 64,
        "requests": 1000,
        "ok": 1000,
        "elapsed_s": 10.0,
        "throughput": throughput,
        "latency": LatencySummary(p95 / 2, p95, p99, p99, p95 / 2),
        "status_errors": {},
        "transport_errors": {},
        "warmup_requests": 10,
        "cpu_s": 1.0,
        "mean_body_bytes": 100.0,
        "statuses": {200: 1000},
    }
    values.update(extra)
    return LoadResult(**values)  # type: ignore[arg-type]


def _report(runs: list[ScenarioRun]) -> BenchReport:
    dataset = Dataset((), (), 100_000, 40, date(2026, 12, 1), "postgresql://x/y")
    config = BenchConfig(database_url="postgresql://x/y", redis_url="redis://x/9", command="c")
    report = BenchReport(
        config=config, dataset=dataset, started=T0, commit="abc1234", machine="2 cores"
    )
    report.rounds.append(runs)
    return report


def _run(name: str, result: LoadResult, **extra: object) -> ScenarioRun:
    return ScenarioRun(name, 1, result, 5.0, dataset="100 k", **extra)  # type: ignore[arg-type]


def test_targets_are_judged_with_the_size_of_a_miss() -> None:
    report = _report(
        [
            _run("constant", _result(7000, 10, 15)),
            _run("availability-warm", _result(1400, 50, 60)),
            _run("raw-booking", _result(400, 20, 30)),
            _run("booking", _result(200, 30, 40)),
            _run(
                "contention",
                _result(300, 50, 80, statuses={201: 2, 409: 198}),
                contention=Contention(winners=(1, 1), rows=(1, 1)),
            ),
            _run(
                "mixed",
                _result(1600, 45, 90, status_errors={500: 1}, requests=1001),
            ),
            _run("naive-listing", _result(10, 500, 900)),
            _run("listing", _result(300, 20, 40)),
            _run(
                "naive-contention",
                _result(900, 10, 20, statuses={201: 5, 409: 195}),
                contention=Contention(winners=(2, 3), rows=(2, 3)),
            ),
        ]
    )
    found = {v.target: v for v in verdicts(report)}
    warm = found["warm availability ≥ 50 % of the constant endpoint"]
    assert (warm.met, warm.measured, warm.shortfall) == (False, "0.20", "2.5x short")
    assert found["bookings ≥ 25 % of the raw transaction"].met is True
    assert found["bookings p99 < 50 ms (at 64 clients)"].met is True
    assert found["contention: exactly one winner per slot"].met is True
    assert found["mixed ≥ 1,500 requests/s"].met is True
    p95 = found["mixed p95 ≤ 40 ms"]
    assert (p95.met, p95.shortfall) == (False, "+12 % over")
    assert found["mixed: no errors"].met is False
    assert found["listing ≥ 20x its anti-pattern's throughput"].met is True
    assert found["cold availability ≥ 60 % of the raw asyncpg query"].met is None  # not run
    naive = found["check-then-insert lets double bookings through (counted, not a target)"]
    assert naive.measured.startswith("3 double bookings over 2 slots")

    text = render_report(report)
    assert (
        "| warm availability ≥ 50 % of the constant endpoint | 0.20 | **missed** (2.5x short) |"
        in text
    )
    assert "| cold availability ≥ 60 % of the raw asyncpg query | - | not measured |" in text
    assert "0.20 x constant" in text  # the row's ratio to its baseline
    assert "≥ 0.5 x constant: **missed**" in text  # and its target
    assert "201s per slot [2, 3], active rows per slot [2, 3], double bookings 3" in text


def test_a_wrong_contention_result_is_a_missed_target() -> None:
    report = _report(
        [
            _run(
                "contention",
                _result(300, 50, 80, statuses={201: 2, 409: 198}),
                contention=Contention(winners=(1, 1), rows=(1, 2)),
            )
        ]
    )
    (verdict,) = [v for v in verdicts(report) if v.target.startswith("contention: exactly")]
    assert verdict.met is False


def test_dataset_labels_and_route_checks() -> None:
    def label(n: int) -> str:
        return Dataset((), (), n, 1, date(2026, 12, 1)).label

    assert [label(n) for n in (999, 3_000, 100_000, 9_996_450)] == ["999", "3 k", "100 k", "10 M"]
    assert route_present(("app.appointments.endpoints", "/v1/appointments/{}/cancel"))
    assert not route_present(("app.appointments.endpoints", "/v1/appointments/{}/nothing"))
    # Every writing scenario runs on a scratch copy; baselines are marked as such.
    for name in ("booking", "contention", "mixed", "raw-booking", "naive-contention", "records"):
        assert SCENARIOS[name].scratch, name
    assert {n for n, s in SCENARIOS.items() if s.kind == "baseline"} == {
        "constant",
        "raw-availability",
        "raw-booking",
        "naive-listing",
        "naive-availability",
        "naive-contention",
    }


def test_database_cpu_counts_live_and_new_backends() -> None:
    hz = os.sysconf("SC_CLK_TCK")
    # Backend 1 ran on, 2 exited (lost), 3 started during the run.
    assert database_cpu_seconds({1: 10, 2: 5}, {1: 30, 3: 7}) == (20 + 7) / hz
    assert database_cpu_seconds(None, {1: 1}) is None
    assert database_cpu_ticks(f"no_such_database_{uuid.uuid4().hex}") == {}


def test_database_cpu_counts_backends_that_exited_through_the_postmaster() -> None:
    hz = os.sysconf("SC_CLK_TCK")
    # The postmaster reaped 12 ticks of children meanwhile: backend 2 (5 ticks of them before
    # the run, counted once) and others that came and went within the run.
    assert database_cpu_seconds({1: 10, 2: 5}, {1: 30, 3: 7}, 100, 112) == (20 + 7 + 12 - 5) / hz
    assert database_cpu_seconds({1: 10}, {1: 30}, None, 112) == 20 / hz
    reaped = reaped_backend_ticks()  # the test database's server runs on this machine
    assert reaped is None or reaped >= 0


def test_server_settings_are_parsed_checked_and_shown() -> None:
    config, report_path = parse_args(
        [
            "--database-url",
            "postgresql://u:secret@127.0.0.1/db",
            "--redis-url",
            "redis://127.0.0.1:6379/9",
            "--server-setting",
            "CAREBOOK_DB_POOL_PRE_PING=false",
            "--mixed-workers",
            "2",
            "--smoke",
        ]
    )
    assert report_path is None
    assert config.server_settings == (("CAREBOOK_DB_POOL_PRE_PING", "false"),)
    assert (config.mixed_workers, config.contenders, config.contention_slots) == (2, 20, 2)
    assert "u:***@" in config.command  # no password in the report
    assert config.workers_for(SCENARIOS["mixed"]) == 2
    assert config.workers_for(SCENARIOS["booking"]) == 1
    with pytest.raises(SystemExit):
        parse_args(["--database-url", "x", "--redis-url", "y", "--server-setting", "PATH=/"])
    report = _report([_run("constant", _result(7000, 10, 15))])
    report.config = config
    assert "`CAREBOOK_DB_POOL_PRE_PING=false`" in render_report(report)


def test_cpu_per_request_adds_the_database_share() -> None:
    served = _run("listing", _result(300, 20, 40), database_cpu_s=0.5)  # 5.0 s server CPU
    assert cpu_per_request(served) == "4.95 + 0.50"  # over 1,010 requests sent
    in_process = ScenarioRun("raw-booking", 1, _result(800, 5, 9), None, in_process=True)
    assert cpu_per_request(in_process) == "0.99 + 0.00"  # its own CPU: the result's 1.0 s


# --- database latency, open loop, results files ---------------------------------------------


def test_database_urls_are_sent_through_the_proxy_on_loopback_only() -> None:
    assert via_proxy("postgresql://u:p@127.0.0.1:5432/db?x=1", 6001) == (
        "postgresql://u:p@127.0.0.1:6001/db?x=1"
    )
    assert via_proxy("postgresql+asyncpg://localhost/db", 6001) == (
        "postgresql+asyncpg://127.0.0.1:6001/db"
    )
    assert database_port("postgresql://127.0.0.1/db") == 5432
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        via_proxy("postgresql://db.internal:5432/db", 6001)


def test_latency_rates_and_results_options_are_parsed_and_checked(tmp_path: Path) -> None:
    base = ["--database-url", "postgresql://u@127.0.0.1/db", "--redis-url", "redis://x/9"]
    config, _ = parse_args(
        [
            *base,
            "--db-latency-ms",
            "0.5",
            "--open-loop-rates",
            "500,1000",
            "--latency-scenario",
            "listing",
            "--latency-scenario",
            "naive-listing",
            "--results",
            str(tmp_path / "r.json"),
            "--compare",
            str(BASELINE),
        ]
    )
    assert config.db_latencies_ms == (0.0, 0.5)  # the main run is always direct
    assert config.proxied_latencies == (0.5,)
    assert config.open_loop_rates == (500.0, 1000.0)
    assert config.latency_scenarios == ("listing", "naive-listing")
    assert (config.results, config.compare) == (tmp_path / "r.json", BASELINE)
    assert parse_args(base)[0].db_latencies_ms == (0.0,)
    for bad in (
        ["--db-latency-ms", "-1"],
        ["--db-latency-ms", "fast"],
        ["--open-loop-rates", "0"],
        ["--compare", str(tmp_path / "missing.json")],
    ):
        with pytest.raises(SystemExit):
            parse_args([*base, *bad])
    with pytest.raises(SystemExit):  # the proxy only reaches PostgreSQL on loopback
        parse_args(
            [
                *("--database-url", "postgresql://db.internal/db", "--redis-url", "r"),
                *("--db-latency-ms", "0,0.5"),
            ]
        )


def _at(name: str, result: LoadResult, ms: float) -> ScenarioRun:
    proxy = ProxyStats(3, 500, 90_000, 4, 500, 40.0, 180.0, 900.0)
    return _run(name, result, db_latency_ms=ms, proxy=proxy, proxy_cpu_s=0.4)


def _open(rate: float, p95: float, p99: float, throughput: float, dropped: int) -> ScenarioRun:
    result = _result(throughput, p95, p99, concurrency=80)
    summary = LatencySummary(1.0, 2.0, 3.0, 4.0, 1.5)
    loop = OpenLoopResult(
        rate=rate,
        result=result,
        scheduled=1000 + dropped,
        dropped=dropped,
        late=7,
        waited=dropped,
        initial_connections=64,
        peak_connections=80,
        send_lag=summary,
        service=summary,
    )
    return ScenarioRun("mixed", 2, result, 5.0, dataset="100 k", open_loop=loop)


def _variant_report() -> BenchReport:
    report = _report(
        [
            _run("listing", _result(300, 20, 40)),
            _run("naive-listing", _result(400, 500, 900)),
            _run("availability-cold", _result(350, 400, 600)),
            _run("naive-availability", _result(800, 100, 130)),
            _at("listing", _result(200, 30, 60), 0.5),
            _at("naive-listing", _result(8, 9000, 9500), 0.5),
            _open(500, 30, 90, 499, 0),
            _open(1000, 900, 1500, 410, 1200),
        ]
    )
    report.config = replace(
        report.config, db_latencies_ms=(0.0, 0.5), open_loop_rates=(500.0, 1000.0)
    )
    return report


def test_the_anti_pattern_ratios_are_reported_at_each_latency() -> None:
    report = _variant_report()
    assert ratios(report, 0.5, LATENCY_RATIOS) == [("listing ÷ naive-listing", [25.0])]
    found = {v.target: v for v in verdicts(report)}
    direct = found["listing ≥ 20x its anti-pattern's throughput"]
    assert (direct.met, direct.measured) == (False, "0.75")
    remote = found["listing ≥ 20x its anti-pattern's throughput, database +0.5 ms each way"]
    assert (remote.met, remote.measured, remote.scenario) == (True, "25.00", "listing @ db +0.5 ms")
    not_run = "availability-cold ≥ 20x its anti-pattern's throughput, database +0.5 ms each way"
    assert found[not_run].met is None

    text = render_report(report)
    assert "#### Database latency: the anti-pattern comparison" in text
    assert "| ratio | 0 ms (direct) | +0.5 ms each way |" in text
    assert "| listing ÷ naive-listing | 0.75 | 25.00 |" in text
    assert "| availability-cold ÷ naive-availability | 0.44 | - |" in text
    assert "| naive-listing | 400 | 250 | 900 | 8 | 4500 | 9500 |" in text
    assert "| listing @ db +0.5 ms | 1 | 64 |" in text  # its full row, with its target
    assert "≥ 20 x anti-pattern: met" in text
    assert "PostgreSQL through the latency proxy, +0.5 ms each way: 500 chunks" in text
    # The variants stay out of the main table and its ratios.
    main_table = text.split("#### Targets")[0]
    assert "db +0.5 ms" not in main_table
    assert "open loop" not in main_table.split("#### Results")[1]


def test_open_loop_rates_are_tabled_and_judged() -> None:
    report = _variant_report()
    found = {v.scenario: v for v in verdicts(report) if v.scenario.startswith("mixed @")}
    kept = found["mixed @ open loop 500/s"]
    assert kept.met is True
    behind = found["mixed @ open loop 1000/s"]
    assert behind.met is False
    assert behind.shortfall == (
        "p95 22.5x over; p99 15.0x over; achieved 2.4x short; 1,200 dropped"
    )
    text = render_report(report)
    assert "#### Open loop: `mixed` at constant arrival rates" in text
    assert (
        "| 1,000 | 2 | 410 | 450 | 900 | 1500 | 1500 | 3.0 | 3.0 | 0 | 2,200 | 7 | 1,200 "
        "| 1,200 | 64 → 80 | p95 ≤ 40 ms, p99 ≤ 100 ms, rate kept: **missed** |"
    ) in text
    assert "| 500 | 2 | 499 |" in text


def test_median_of_open_loop_rounds_adds_the_counts() -> None:
    first, second = _open(1000, 100, 200, 900, 10), _open(1000, 300, 400, 700, 30)
    median = median_run([first, second])
    assert median.open_loop is not None
    assert (median.open_loop.dropped, median.open_loop.scheduled) == (40, 2040)
    assert median.result.latency.p99 == 300
    assert median.variant == "open loop 1000/s"


def test_results_round_trip_and_the_before_after_table(tmp_path: Path) -> None:
    report = _variant_report()
    report.previous = load_results(BASELINE)
    path = tmp_path / "results.json"
    write_results(path, results_document(report))
    document = load_results(path)
    assert set(document["runs"]) == {
        "listing",
        "naive-listing",
        "availability-cold",
        "naive-availability",
        "listing @ db +0.5 ms",
        "naive-listing @ db +0.5 ms",
        "mixed @ open loop 500/s",
        "mixed @ open loop 1000/s",
    }
    assert document["runs"]["mixed @ open loop 1000/s"]["open_loop"]["dropped"] == 1200
    assert document["ratios"]["0.5"] == {"listing ÷ naive-listing": 25.0}
    assert document["ratios"]["0"]["listing ÷ naive-listing"] == 0.75

    lines = render_comparison(load_results(BASELINE), document)
    text = "\n".join(lines)
    assert lines[0] == "#### Before / after: run of 2026-12-01 07:30 UTC → this run"
    # listing: 286 req/s, p99 675 ms on 2026-12-01.
    assert "| listing | 286 → 300 | +5 % (better) | 201 → 10.0 | 507 → 20.0 | 675 → 40.0 " in text
    assert "| 16.9x less (better) | 0 → 0 |" in text
    assert "| mixed @ open loop 500/s | - → 499 | - |" in text
    assert "| constant | 12,525 → - | - |" in text  # measured before, not now
    assert "| listing ÷ naive-listing | 0.78 → 0.75 |" in text
    assert "| listing ÷ naive-listing (database +0.5 ms each way) | - → 25.00 |" in text
    assert "| listing ≥ 20x its anti-pattern's throughput | 0.78 (missed) | 0.75 (missed) |" in text
    assert "| mixed: no errors | 0 (met) | - |" in text
    assert "#### Before / after" in render_report(report)
    (tmp_path / "other.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="carebook-load-results"):
        load_results(tmp_path / "other.json")


def test_the_transcribed_baseline_holds_the_complete_run() -> None:
    baseline = load_results(BASELINE)
    runs = baseline["runs"]
    assert len(runs) == len(SCENARIOS) + 2  # every scenario and baseline, and the scale check
    assert runs["mixed"]["throughput"] == 303
    assert (runs["mixed"]["p95_ms"], runs["mixed"]["p99_ms"]) == (428, 475)
    assert runs["availability-cold @ 10 M"]["p50_ms"] == 148
    assert baseline["ratios"]["0"]["availability-warm ÷ constant"] == 0.14
    assert sum(1 for t in baseline["targets"] if t["met"]) == 4
