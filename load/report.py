"""The Markdown section the runner writes between its markers in docs/benchmarks.md."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path

from load.client import OpenLoopPlan
from load.machine import commit_summary, machine_summary
from load.medians import LATENCY_RATIOS, main_runs, median, median_table, ratios, scale_rows
from load.profiler import render_profile, summarize_profile
from load.results import render_comparison, results_document
from load.runs import (
    LATENCY_SCENARIOS,
    OPEN_LOOP_SCENARIO,
    BenchReport,
    ScenarioRun,
    is_main,
    millis,
    run_label,
)
from load.scenarios import SCENARIOS
from load.targets import Verdict, verdicts

BEGIN_MARK = "<!-- load.bench:begin -->"
END_MARK = "<!-- load.bench:end -->"
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
    label = run_label(run, main)
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
        millis(r.latency.p50),
        millis(r.latency.p95),
        millis(r.latency.p99),
        millis(r.latency.max),
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
    table = {r.scenario: r for r in medians.values() if is_main(r, main) and not r.skipped}
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
            lines.append(f"| {label} | {' | '.join(cells)} | **{median(values):.2f}** |")
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
                f"| {r.scenario} ({r.small} → {r.large}) | {millis(a.latency.p50)} "
                f"| {millis(a.latency.p95)} | {millis(b.latency.p50)} | {millis(b.latency.p95)} "
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
            by_latency = {ms: main_runs(report, runs, ms) for ms in config.db_latencies_ms}
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
        cells = [f"{median(v):.2f}" if v else "-" for v in values]
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
                cells += [f"{r.throughput:,.0f}", millis(r.latency.p50), millis(r.latency.p99)]
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
            f"| {o.rate:,.0f} | {run.workers} | {r.throughput:,.0f} | {millis(r.latency.p50)} "
            f"| {millis(r.latency.p95)} | {millis(r.latency.p99)} | {millis(r.latency.max)} "
            f"| {millis(o.service.p99)} | {millis(o.send_lag.p99)} | {r.error_summary()} "
            f"| {o.scheduled:,} | {o.late:,} | {o.waited:,} | {o.dropped:,} "
            f"| {o.initial_connections} → {o.peak_connections} "
            f"| {marks.get(run_label(run, report.dataset.label), '-')} |"
        )
    lines.append("")
    return lines


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
