"""A smoke run of the load runner, small enough for CI: every scenario and baseline against real
uvicorn subprocesses (and the in-process asyncpg baselines) on a tiny `seed --scale` dataset,
for about a second each, plus the scale check on a second tiny dataset, a few scenarios again
with PostgreSQL behind the latency proxy, and `mixed` open-loop at a low rate, so the runner
cannot rot. The report and the results file are written to temporary files: tests never touch
docs/benchmarks.md."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.seed.scale import seed_scale
from load.baselines import naive_app
from load.baselines.raw_asyncpg import HORIZON, MIN_NOTICE
from load.bench import (
    BEGIN_MARK,
    END_MARK,
    REPO_ROOT,
    BenchConfig,
    BenchReport,
    load_results,
    render_report,
    results_document,
    run_bench,
    server_env,
    serving,
    write_results,
)
from load.bench import write_report as write_bench_report
from load.client import build_request, fetch
from load.prepare import FREE_SLOTS_PARAMS, FREE_SLOTS_SQL, bind, connect, database_name
from load.scenarios import (
    SCALE_SCENARIOS,
    SCENARIOS,
    availability_windows,
    load_dataset,
    route_present,
)
from tests.fixtures.app import make_settings
from tests.fixtures.servers import fresh_database

if TYPE_CHECKING:  # imported at run time, pytest would try to collect the `Test*` class
    from tests.fixtures.servers import TestServers

SMALL, LARGE = 3_000, 6_000  # appointments in the two datasets
CONTENDERS, SLOTS = 12, 2
LATENCY_MS = 0.5
# Behind the proxy: a served anti-pattern pair and an in-process baseline (both ways of
# reaching PostgreSQL), not all nine, to keep CI fast.
LATENCY_SET = ("listing", "raw-availability", "naive-listing")  # in the scenarios' order
RATE = 40.0  # mixed, open loop: 24 requests in 0.6 s
BASELINE = REPO_ROOT / "load" / "results" / "2026-12-01.json"


@dataclass(frozen=True)
class Datasets:
    small: str
    large: str


@pytest.fixture(scope="module")
async def datasets(test_servers: TestServers) -> AsyncIterator[Datasets]:
    today = datetime.now(UTC).date()
    async with (
        fresh_database(test_servers, "carebook_load", migrate=True) as small,
        fresh_database(test_servers, "carebook_load", migrate=True) as large,
    ):
        for url, size in ((small, SMALL), (large, LARGE)):
            await seed_scale(make_settings(url, test_servers.redis_url), size, today=today)
        yield Datasets(small, large)


async def _table_counts(url: str) -> dict[str, int]:
    connection = await connect(url)
    try:
        return {
            table: int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
            for table in ("appointments", "outbox", "refresh_tokens", "idempotency_keys")
        }
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def smoke(datasets: Datasets, test_servers: TestServers) -> BenchReport:
    config = BenchConfig(
        database_url=datasets.small,  # the uvicorn subprocesses get it through their environment
        redis_url=test_servers.redis_url,
        duration_s=0.6,
        warmup_s=0.1,
        concurrency=4,
        max_requests=300,
        contenders=CONTENDERS,
        contention_slots=SLOTS,
        scale_database_url=datasets.large,
        command="pytest tests/integration/test_load_smoke.py",
        db_latencies_ms=(0.0, LATENCY_MS),
        latency_scenarios=LATENCY_SET,
        open_loop_rates=(RATE,),
        compare=BASELINE,
    )
    return await run_bench(config)


async def test_every_scenario_and_baseline_runs_and_is_reported(
    smoke: BenchReport, datasets: Datasets, tmp_path: Path
) -> None:
    (runs,) = smoke.rounds
    assert smoke.scale_dataset is not None
    small, large = smoke.dataset.label, smoke.scale_dataset.label
    assert (small, large) == ("3 k", "6 k")
    expected = [(name, small, "") for name in SCENARIOS]
    expected += [(name, large, "") for name in SCALE_SCENARIOS]
    expected += [(name, small, f"db +{LATENCY_MS:g} ms") for name in LATENCY_SET]
    expected += [("mixed", small, f"open loop {RATE:g}/s")]
    assert [(run.scenario, run.dataset, run.variant) for run in runs] == expected
    for run in runs:
        scenario = SCENARIOS[run.scenario]
        if run.skipped:  # only an endpoint that this build does not have yet
            assert scenario.route is not None
            assert not route_present(scenario.route), run.scenario
            continue
        result = run.result
        assert result.ok > 0, run.scenario
        assert result.errors == 0, (run.scenario, result.error_summary())
        # Every measured request is accounted for: an answer or an error, by kind.
        assert result.requests == result.ok + result.errors
        assert sum(result.statuses.values()) + sum(result.transport_errors.values()) == (
            result.requests
        )
        assert result.requests + result.warmup_requests <= smoke.config.max_requests
        assert result.latency.p50 <= result.latency.p99 <= result.latency.max
        assert (run.server_cpu_s is None) == run.in_process, run.scenario

    by_name = {run.scenario: run for run in runs if run.dataset == small and not run.variant}
    assert by_name["availability-cold"].cache_hit_rate == 0.0  # cache off: every lookup misses
    warm = by_name["availability-warm"]
    assert warm.priming is not None
    assert warm.priming.errors == 0
    assert warm.cache_hit_rate is not None
    assert warm.cache_hit_rate > 0.5  # primed: the timed requests find their windows cached
    assert by_name["search"].cache_hit_rate is None
    assert set(by_name["booking"].result.statuses) == {201}  # distinct free slots: no 409
    assert set(by_name["raw-booking"].result.statuses) == {201}
    mixed = by_name["mixed"].result
    assert mixed.requests + mixed.warmup_requests <= smoke.config.max_requests

    text = render_report(smoke)
    path = tmp_path / "benchmarks.md"
    write_bench_report(path, text)
    written = path.read_text()
    assert BEGIN_MARK in written
    assert END_MARK in written
    for name in SCENARIOS:
        assert f"| {name} | 1 | " in written, name
    for name in SCALE_SCENARIOS:
        assert f"| {name} @ {large} | 1 | " in written
    assert "#### Targets (issue 8)" in written
    assert "#### Scale check (medians)" in written
    assert "availability-warm ÷ constant" in written
    assert "booking ÷ raw-booking" in written
    assert "3,000 appointments" in written
    assert "#### Database latency: the anti-pattern comparison" in written
    assert f"| listing @ db +{LATENCY_MS:g} ms | 1 | " in written
    assert "#### Open loop: `mixed` at constant arrival rates" in written
    assert "#### Before / after: run of 2026-12-01 07:30 UTC → this run" in written
    results = tmp_path / "results.json"
    write_results(results, results_document(smoke))
    document = load_results(results)
    assert f"raw-availability @ db +{LATENCY_MS:g} ms" in document["runs"]
    assert document["runs"][f"mixed @ open loop {RATE:g}/s"]["open_loop"]["rate"] == RATE
    assert "listing ÷ naive-listing" in document["ratios"][f"{LATENCY_MS:g}"]


async def test_latency_runs_reach_postgresql_through_the_proxy(smoke: BenchReport) -> None:
    (runs,) = smoke.rounds
    delayed = [run for run in runs if run.db_latency_ms]
    assert [run.scenario for run in delayed] == list(LATENCY_SET)
    for run in delayed:
        assert run.db_latency_ms == LATENCY_MS
        assert run.proxy is not None
        # The server (or the in-process pool) and the setup talked to PostgreSQL through it.
        assert run.proxy.connections > 0, run.scenario
        assert run.proxy.chunks > 0, run.scenario
        assert run.database_cpu_s is not None
    direct = [run for run in runs if not run.db_latency_ms]
    assert all(run.proxy is None for run in direct)


async def test_the_open_loop_run_accounts_for_every_scheduled_request(smoke: BenchReport) -> None:
    (runs,) = smoke.rounds
    (run,) = [run for run in runs if run.open_loop is not None]
    loop = run.open_loop
    assert loop is not None
    assert (run.scenario, run.workers, loop.rate) == ("mixed", 1, RATE)
    result = run.result
    assert result.ok > 0
    assert result.errors == 0, result.error_summary()
    assert loop.scheduled == result.requests + loop.dropped
    assert loop.scheduled + result.warmup_requests == 24  # 0.6 s at 40 requests/s
    assert loop.initial_connections == 4  # --concurrency
    assert result.latency.p50 <= result.latency.p99 <= result.latency.max


async def test_contention_has_one_winner_per_slot_and_the_naive_baseline_is_counted(
    smoke: BenchReport,
) -> None:
    (runs,) = smoke.rounds
    by_name = {run.scenario: run for run in runs}
    carebook = by_name["contention"]
    assert carebook.contention is not None
    assert carebook.contention.winners == (1,) * SLOTS
    assert carebook.contention.rows == (1,) * SLOTS
    assert carebook.contention.double_bookings == 0
    assert carebook.result.statuses == {201: SLOTS, 409: SLOTS * (CONTENDERS - 1)}
    naive = by_name["naive-contention"]
    assert naive.contention is not None
    # Whatever got through, the clients' 201s and the rows in the table agree: the count of
    # double bookings is the table's truth, not the load generator's impression.
    assert naive.contention.winners == naive.contention.rows
    assert all(n >= 1 for n in naive.contention.rows)
    assert naive.result.statuses.get(201, 0) == sum(naive.contention.rows)
    assert naive.contention.double_bookings == sum(naive.contention.rows) - SLOTS


async def test_the_prepared_databases_are_left_as_they_were(
    smoke: BenchReport, datasets: Datasets, test_servers: TestServers
) -> None:
    # Writing scenarios ran on scratch copies; logins of the reading ones were forgotten.
    for url in (datasets.small, datasets.large):
        counts = await _table_counts(url)
        assert counts == {
            "appointments": SMALL if url == datasets.small else LARGE,
            "outbox": 0,
            "refresh_tokens": 0,
            "idempotency_keys": 0,
        }
    admin = await connect(test_servers.server_url)
    try:
        names = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
    finally:
        await admin.close()
    assert not any(n.startswith(f"{database_name(datasets.small)}_run") for n in names)
    # Tests never touch the committed report.
    official = REPO_ROOT / "docs" / "benchmarks.md"
    assert "pytest tests/integration/test_load_smoke.py" not in official.read_text()


async def _sql_slots(url: str, provider: uuid.UUID, first: date, last: date) -> list[str]:
    """Free slot starts from the API's own statement, for the naive baseline's minute."""
    now = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    values = {
        "provider_id": provider,
        "from_date": first,
        "to_date": last,
        "earliest": now + MIN_NOTICE,
        "latest": now + HORIZON,
        "ignore_appointment_id": None,
    }
    connection = await connect(url)
    try:
        rows = await connection.fetch(FREE_SLOTS_SQL, *bind(FREE_SLOTS_PARAMS, values))
    finally:
        await connection.close()
    return [r["starts_at"].isoformat() for r in rows if r["starts_at"] is not None]


async def test_the_python_loop_baseline_gives_the_set_based_answer(
    datasets: Datasets, test_servers: TestServers
) -> None:
    config = BenchConfig(database_url=datasets.small, redis_url=test_servers.redis_url)
    dataset = await load_dataset(datasets.small, max_providers=6)
    env = server_env(config, cache_enabled=False)
    async with serving(
        SCENARIOS["naive-availability"].app, config, cache_enabled=False, env=env
    ) as server:
        for provider, first, last in availability_windows(dataset)[:12]:
            raw = build_request(
                "GET",
                f"{naive_app.PREFIX}/v1/providers/{provider.id}/availability",
                port=server.port,
                params={"from": first.isoformat(), "to": last.isoformat()},
            )
            before = await _sql_slots(datasets.small, provider.id, first, last)
            response = await fetch(server.port, raw)
            after = await _sql_slots(datasets.small, provider.id, first, last)
            assert response.status == 200
            starts = [
                datetime.fromisoformat(s["start"]).astimezone(UTC).isoformat()
                for s in json.loads(response.body)["slots"]
            ]
            assert starts in (before, after)  # the same minute as one of them
            assert starts, "a window of a seeded provider has free slots"
