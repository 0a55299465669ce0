"""A smoke run of the load runner, small enough for CI: every scenario against a real uvicorn
subprocess on the test database, for a couple of seconds each, so the runner cannot rot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from load.bench import BEGIN_MARK, END_MARK, REPO_ROOT, BenchConfig, render_report, run_bench
from load.bench import write_report as write_bench_report
from load.scenarios import SCENARIOS, load_dataset
from tests.fixtures.booking import Booking

if TYPE_CHECKING:  # imported at run time, pytest would try to collect the `Test*` class
    from tests.fixtures.servers import TestServers


async def test_every_scenario_runs_without_errors(
    booking: Booking, database_url: str, test_servers: TestServers, tmp_path: Path
) -> None:
    await booking.provider(full_name="Dr. Smoke One", specialty="General Practice")
    await booking.provider(
        full_name="Dr. Smoke Two", specialty="Dermatology", timezone="America/New_York"
    )
    dataset = await load_dataset(database_url)
    assert len(dataset.providers) == 2
    assert dataset.specialties == ("Dermatology", "General Practice")

    config = BenchConfig(
        database_url=database_url,  # the uvicorn subprocess gets it through its environment
        redis_url=test_servers.redis_url,
        duration_s=1.5,
        warmup_s=0.3,
        concurrency=4,
        max_requests=300,
        command="pytest tests/integration/test_load_smoke.py",
    )
    official = REPO_ROOT / "docs" / "benchmarks.md"
    official_before = official.read_bytes() if official.exists() else None

    report = await run_bench(config, dataset=dataset)

    (runs,) = report.rounds
    assert [run.scenario for run in runs] == list(SCENARIOS)
    for run in runs:
        result = run.result
        assert result.throughput > 0, run.scenario
        assert result.ok > 0, run.scenario
        assert result.errors == 0, (run.scenario, result.error_summary())
        assert result.requests + result.warmup_requests <= config.max_requests
        assert result.latency.p50 <= result.latency.p99 <= result.latency.max
    by_name = {run.scenario: run for run in runs}
    assert by_name["availability-cold"].cache_hit_rate == 0.0  # cache off: every lookup misses
    warm = by_name["availability-warm"]
    assert warm.priming is not None
    assert warm.priming.errors == 0
    assert warm.cache_hit_rate is not None
    assert warm.cache_hit_rate > 0.5  # primed: the timed requests find their windows cached
    assert by_name["search"].cache_hit_rate is None

    path = tmp_path / "benchmarks.md"
    write_bench_report(path, render_report(report))
    text = path.read_text()
    assert BEGIN_MARK in text
    assert END_MARK in text
    for name in SCENARIOS:
        assert f"| {name} | 1 | 4 |" in text
    assert "availability-warm ÷ constant" in text
    assert "2 providers (2 used, 2 specialties)" in text
    # Tests never touch the committed report.
    assert (official.read_bytes() if official.exists() else None) == official_before
