"""One scenario run: its database (a scratch copy if it writes), its server (or the
in-process baseline), the priming, the load, and the CPU, cache, log and proxy figures taken
around it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from load import prepare
from load.client import (
    LOOPBACK,
    LatencySummary,
    LoadPlan,
    LoadResult,
    cycle_requests,
    merge_results,
    run_calls,
    run_load,
    run_open_loop,
)
from load.latency_proxy import ProxyProcess, ProxyStats
from load.machine import (
    database_cpu_seconds,
    database_cpu_ticks,
    process_cpu_seconds,
    reaped_backend_ticks,
)
from load.profiler import record_profile
from load.runs import BenchConfig, Priming, ScenarioRun
from load.scenarios import Dataset, Scenario, Setup, Workload, route_present
from load.servers import hit_rate, scrape_cache, server_env, serving

PRIME_CONCURRENCY = 16
PRIME_LIMIT_S = 120.0


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
                record_profile(
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
