"""What the rounds of a run add up to: column-wise median runs, throughput ratios taken within
each round, and the scale check's pairs of runs on the two datasets."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from load.client import LatencySummary, LoadResult, OpenLoopResult
from load.latency_proxy import ProxyStats
from load.runs import LATENCY_SCENARIOS, BenchReport, Priming, ScenarioRun
from load.scenarios import SCALE_SCENARIOS, Contention


def median(values: Sequence[float]) -> float:
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
        p50=median([r.latency.p50 for r in results]),
        p95=median([r.latency.p95 for r in results]),
        p99=median([r.latency.p99 for r in results]),
        max=median([r.latency.max for r in results]),
        mean=median([r.latency.mean for r in results]),
    )
    result = replace(
        first.result,
        requests=round(median([r.requests for r in results])),
        ok=round(median([r.ok for r in results])),
        elapsed_s=median([r.elapsed_s for r in results]),
        throughput=median([r.throughput for r in results]),
        latency=latency,
        status_errors=status,
        transport_errors=transport,
        cpu_s=median([r.cpu_s for r in results]),
        mean_body_bytes=median([r.mean_body_bytes for r in results]),
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
            seconds=median([p.seconds for p in primes]),
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
        median(cpus) if cpus else None,
        database_cpu_s=median(database_cpus) if database_cpus else None,
        cache_hit_rate=median(rates) if rates else None,
        priming=priming,
        within_one_minute=all(run.within_one_minute for run in runs),
        server_log=logged,
        dataset=first.dataset,
        contention=contention,
        notes=first.notes,
        in_process=first.in_process,
        db_latency_ms=first.db_latency_ms,
        proxy=_median_proxy(proxies) if proxies else None,
        proxy_cpu_s=median(proxy_cpus) if proxy_cpus else None,
        open_loop=_median_open_loop(open_loops, result) if open_loops else None,
    )


def _median_latency(summaries: Sequence[LatencySummary]) -> LatencySummary:
    return LatencySummary(
        p50=median([s.p50 for s in summaries]),
        p95=median([s.p95 for s in summaries]),
        p99=median([s.p99 for s in summaries]),
        max=median([s.max for s in summaries]),
        mean=median([s.mean for s in summaries]),
    )


def _median_proxy(stats: Sequence[ProxyStats]) -> ProxyStats:
    """Counts added up, lateness percentiles the median of the runs', the maximum the max."""
    return ProxyStats(
        connections=sum(s.connections for s in stats),
        chunks=sum(s.chunks for s in stats),
        bytes=sum(s.bytes for s in stats),
        max_queued=max(s.max_queued for s in stats),
        late_chunks=sum(s.late_chunks for s in stats),
        lateness_p50_us=median([s.lateness_p50_us for s in stats]),
        lateness_p99_us=median([s.lateness_p99_us for s in stats]),
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


def median_table(report: BenchReport) -> dict[tuple[str, str, float, float], ScenarioRun]:
    """Median runs keyed by `ScenarioRun.key` (scenario, dataset label, database latency,
    open-loop rate), in the order they ran."""
    grouped: dict[tuple[str, str, float, float], list[ScenarioRun]] = {}
    for runs in report.rounds:
        for run in runs:
            grouped.setdefault(run.key, []).append(run)
    return {key: median_run(runs) for key, runs in grouped.items()}


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


def main_runs(
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
                n: r.result.throughput for n, r in main_runs(report, runs, latency_ms).items()
            }
            if by_name.get(top) and by_name.get(bottom):
                values.append(by_name[top] / by_name[bottom])
        if values:
            found.append((label, values))
    return found


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
