"""The results file (`--results`, JSON: the medians, ratios and targets of a run) and the
before/after tables of `--compare`, drawn from two such files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from load.medians import LATENCY_RATIOS, RATIOS, median, median_table, ratios
from load.runs import BenchReport, ScenarioRun, millis, run_label
from load.targets import verdicts

RESULTS_FORMAT = "carebook-load-results/1"


def _run_figures(run: ScenarioRun) -> dict[str, Any]:
    r = run.result
    figures: dict[str, Any] = {
        "scenario": run.scenario,
        "dataset": run.dataset,
        "db_latency_ms": run.db_latency_ms,
        "workers": run.workers,
        "concurrency": r.concurrency,
        "requests": r.requests,
        "throughput": round(r.throughput, 1),
        "p50_ms": round(r.latency.p50, 2),
        "p95_ms": round(r.latency.p95, 2),
        "p99_ms": round(r.latency.p99, 2),
        "max_ms": round(r.latency.max, 2),
        "errors": r.errors,
        "server_cpu_s": run.server_cpu_s,
        "database_cpu_s": run.database_cpu_s,
        "cache_hit_rate": run.cache_hit_rate,
    }
    if run.open_loop is not None:
        o = run.open_loop
        figures["open_loop"] = {
            "rate": o.rate,
            "scheduled": o.scheduled,
            "late": o.late,
            "waited": o.waited,
            "dropped": o.dropped,
            "initial_connections": o.initial_connections,
            "peak_connections": o.peak_connections,
            "service_p99_ms": round(o.service.p99, 2),
            "send_lag_p99_ms": round(o.send_lag.p99, 2),
        }
    if run.proxy is not None:
        figures["proxy"] = asdict(run.proxy)
    return figures


def results_document(report: BenchReport) -> dict[str, Any]:
    """The medians as JSON (`--results`): runs by their report label, the within-round
    ratios (medians) by database latency, and the targets."""
    medians = median_table(report)
    main = report.dataset.label
    latencies = (0.0, *report.config.proxied_latencies)
    return {
        "format": RESULTS_FORMAT,
        "label": f"run of {report.started:%Y-%m-%d %H:%M} UTC",
        "started": report.started.isoformat(),
        "commit": report.commit,
        "command": report.config.command,
        "rounds": len(report.rounds),
        "dataset": {
            "label": main,
            "appointments": report.dataset.appointment_count,
            "providers": report.dataset.provider_count,
        },
        "runs": {
            run_label(run, main): _run_figures(run) for run in medians.values() if not run.skipped
        },
        "ratios": {
            f"{ms:g}": {
                label: round(median(values), 3)
                for label, values in ratios(report, ms, RATIOS if not ms else LATENCY_RATIOS)
            }
            for ms in latencies
        },
        "targets": [
            {"target": v.target, "measured": v.measured, "met": v.met} for v in verdicts(report)
        ],
    }


def write_results(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def load_results(path: Path) -> dict[str, Any]:
    """A results file of `--results` (or a transcribed one), checked for its format."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or document.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not a {RESULTS_FORMAT} file")
    return document


def _change(before: float | None, after: float | None, *, higher_is_better: bool) -> str:
    if before is None or after is None or not before:
        return "-"
    change = (after / before - 1) * 100
    better = change > 0 if higher_is_better else change < 0
    if abs(change) < 0.5:
        return "±0 %"
    if after / before >= 2 or before / after >= 2:
        factor = after / before if after > before else before / after
        text = f"{factor:.1f}x {'more' if after > before else 'less'}"
    else:
        text = f"{change:+.0f} %"
    return f"{text} ({'better' if better else 'worse'})"


def _figure(run: Mapping[str, Any] | None, name: str) -> float | None:
    if run is None or run.get(name) is None:
        return None
    return float(run[name])


def _pair(before: float | None, after: float | None, fmt: str = "{:,.0f}") -> str:
    def text(value: float | None) -> str:
        if value is None:
            return "-"
        return millis(value) if fmt == "ms" else fmt.format(value)

    return f"{text(before)} → {text(after)}"


def render_comparison(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Before/after: every run label of either file, throughput and latency percentiles,
    then the within-round ratios at each database latency."""
    before_runs: Mapping[str, Any] = previous.get("runs", {})
    after_runs: Mapping[str, Any] = current.get("runs", {})
    labels = list(after_runs) + [label for label in before_runs if label not in after_runs]
    lines = [
        f"#### Before / after: {previous.get('label', 'the previous run')} → this run",
        "",
        f"Before: commit `{previous.get('commit') or '?'}`, {previous.get('rounds', '?')} "
        f"round(s), {previous.get('dataset', {}).get('label', '?')} dataset. Medians; "
        "*-*: not measured in that run.",
        "",
        "| scenario | throughput (req/s) | change | p50 ms | p95 ms | p99 ms | p99 change "
        "| errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for label in labels:
        a, b = before_runs.get(label), after_runs.get(label)
        throughput = (_figure(a, "throughput"), _figure(b, "throughput"))
        lines.append(
            f"| {label} "
            f"| {_pair(*throughput)} "
            f"| {_change(*throughput, higher_is_better=True)} "
            f"| {_pair(_figure(a, 'p50_ms'), _figure(b, 'p50_ms'), 'ms')} "
            f"| {_pair(_figure(a, 'p95_ms'), _figure(b, 'p95_ms'), 'ms')} "
            f"| {_pair(_figure(a, 'p99_ms'), _figure(b, 'p99_ms'), 'ms')} "
            f"| {_change(_figure(a, 'p99_ms'), _figure(b, 'p99_ms'), higher_is_better=False)} "
            f"| {_pair(_figure(a, 'errors'), _figure(b, 'errors'))} |"
        )
    before_ratios: Mapping[str, Mapping[str, float]] = previous.get("ratios", {})
    after_ratios: Mapping[str, Mapping[str, float]] = current.get("ratios", {})
    rows = []
    for ms in sorted(set(before_ratios) | set(after_ratios), key=float):
        a_map, b_map = before_ratios.get(ms, {}), after_ratios.get(ms, {})
        for label in list(b_map) + [x for x in a_map if x not in b_map]:
            heading = "" if float(ms) == 0 else f" (database +{ms} ms each way)"
            rows.append(
                f"| {label}{heading} | {_pair(a_map.get(label), b_map.get(label), '{:.2f}')} |"
            )
    if rows:
        lines += ["", "| ratio (median within rounds) | before → after |", "| --- | ---: |", *rows]

    def targets(document: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        return {t["target"]: t for t in document.get("targets", [])}

    def status(target: Mapping[str, Any] | None) -> str:
        if target is None or target.get("met") is None:
            return "-"
        return f"{target['measured']} ({'met' if target['met'] else 'missed'})"

    before_targets, after_targets = targets(previous), targets(current)
    names = list(after_targets) + [t for t in before_targets if t not in after_targets]
    judged = [
        f"| {name} | {status(before_targets.get(name))} | {status(after_targets.get(name))} |"
        for name in names
        if status(before_targets.get(name)) != "-" or status(after_targets.get(name)) != "-"
    ]
    if judged:
        lines += ["", "| target | before | after |", "| --- | --- | --- |", *judged]
    lines.append("")
    return lines
