"""Issue 8's targets as a table, one row per target, and `verdicts`, which judges a report
against it: ratios are the median of within-round ratios, everything else comes from the median
runs."""

from __future__ import annotations

import enum
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from load.medians import LATENCY_RATIOS, ScaleRow, median, median_table, ratios, scale_rows
from load.runs import OPEN_LOOP_SCENARIO, BenchReport, ScenarioRun, is_main, millis
from load.scenarios import SCALE_SCENARIOS

ANTI_PATTERN_FACTOR = 20.0
SCALE_FACTOR = 1.5
OPEN_LOOP_P95_MS = 40.0  # the mixed workload's latency targets, at the audits' rates
OPEN_LOOP_P99_MS = 100.0
KEPT_UP = 0.95  # an open-loop run kept up when it answered this share of its rate
ANTI_PATTERNS = (
    ("listing", "listing ÷ naive-listing"),
    ("availability-cold", "availability-cold ÷ naive-availability"),
    ("contention", "contention ÷ naive-contention"),
)


@dataclass(frozen=True)
class Verdict:
    """One target of issue 8 against what was measured."""

    target: str
    short: str  # the target in a few words, for the results table's *target* column
    scenario: str  # the row of the results table the target belongs to
    measured: str
    met: bool | None  # None: not measured in this run
    shortfall: str = ""

    @property
    def status(self) -> str:
        if self.met is None:
            return "not measured"
        return "met" if self.met else f"**missed** ({self.shortfall})"


def _at_least(value: float, floor: float) -> str:
    if value <= 0:
        return "nothing measured"
    if floor / value < 1.5:
        return f"{(1 - value / floor) * 100:.0f} % short"
    return f"{floor / value:.1f}x short"


def _below(value: float, ceiling: float) -> str:
    if value / ceiling < 2:
        return f"{(value / ceiling - 1) * 100:+.0f} % over"
    return f"{value / ceiling:.1f}x over"


class Comparison(enum.Enum):
    AT_LEAST = "≥"
    BELOW = "<"
    AT_MOST = "≤"
    COUNTED = "counted"  # reported next to the targets, never judged

    def holds(self, value: float, threshold: float) -> bool | None:
        if self is Comparison.AT_LEAST:
            return value >= threshold
        if self is Comparison.BELOW:
            return value < threshold
        if self is Comparison.AT_MOST:
            return value <= threshold
        return None

    def shortfall(self, value: float, threshold: float) -> str:
        if self is Comparison.AT_LEAST:
            return _at_least(value, threshold)
        if self is Comparison.COUNTED:
            return ""
        return _below(value, threshold)


class Each(enum.Enum):
    """What a row is judged on, once or more often."""

    RUN = "run"  # the main runs: main dataset, database direct, closed loop
    LATENCY = "latency"  # the runs at each database latency of the proxy
    RATE = "rate"  # each open-loop run
    SCALE = "scale"  # the larger dataset of the scale check


@dataclass(frozen=True)
class Occasion:
    """One judging of a row: which database latency, open-loop run or scale dataset."""

    each: Each
    latency_ms: float = 0.0
    run: ScenarioRun | None = None  # the open-loop run
    small: str = ""  # the datasets of the scale check
    large: str = ""

    def label(self, scenario: str) -> str:
        """The results-table row: `listing @ db +0.5 ms`, `mixed @ open loop 500/s`, ..."""
        if self.each is Each.LATENCY:
            return f"{scenario} @ db +{self.latency_ms:g} ms"
        if self.each is Each.RATE:
            assert self.run is not None
            return f"{scenario} @ {self.run.variant}"
        if self.each is Each.SCALE:
            return f"{scenario} @ {self.large}"
        return scenario

    def describe(self, template: str) -> str:
        rate = self.run.open_loop.rate if self.run and self.run.open_loop else 0.0
        return template.format(ms=self.latency_ms, rate=rate, small=self.small, large=self.large)


@dataclass(frozen=True)
class Figures:
    """What the rows read, computed once per report."""

    runs: Mapping[str, ScenarioRun]  # the main runs, by scenario
    ratios: Mapping[float, Mapping[str, list[float]]]  # within-round ratios by database latency
    open_loop: Sequence[ScenarioRun]  # the open-loop runs of the main dataset
    scale: Mapping[str, ScaleRow]  # by scenario


@dataclass(frozen=True)
class Reading:
    value: float
    measured: str
    shortfall: str | None = None  # the metric's own words for a miss, not the comparison's


class Metric(Protocol):
    def read(self, figures: Figures, scenario: str, at: Occasion) -> Reading | None: ...


@dataclass(frozen=True)
class Ratio:
    """A throughput ratio at the occasion's database latency."""

    label: str

    def read(self, figures: Figures, scenario: str, at: Occasion) -> Reading | None:
        values = figures.ratios.get(at.latency_ms, {}).get(self.label)
        if not values:
            return None
        value = median(values)
        return Reading(value, f"{value:.2f}")


class OfMainRun(ABC):
    """A metric of the scenario's main run: no reading when the scenario did not run."""

    def read(self, figures: Figures, scenario: str, at: Occasion) -> Reading | None:
        run = figures.runs.get(scenario)
        return None if run is None else self.of(run)

    @abstractmethod
    def of(self, run: ScenarioRun) -> Reading | None: ...


@dataclass(frozen=True)
class Latency(OfMainRun):
    percentile: str  # a field of LatencySummary

    def of(self, run: ScenarioRun) -> Reading:
        value = float(getattr(run.result.latency, self.percentile))
        clients = run.result.concurrency
        return Reading(value, f"{self.percentile} {millis(value)} ms at {clients} clients")


class Throughput(OfMainRun):
    def of(self, run: ScenarioRun) -> Reading:
        value = run.result.throughput
        return Reading(value, f"{value:,.0f} req/s with {run.workers} worker(s)")


class Errors(OfMainRun):
    def of(self, run: ScenarioRun) -> Reading:
        errors = run.result.errors
        return Reading(errors, run.result.error_summary(), f"{errors} errors")


class SlotsNotWonOnce(OfMainRun):
    """Contended slots without exactly one 201, or without exactly one active row after."""

    def of(self, run: ScenarioRun) -> Reading | None:
        if run.contention is None:
            return None
        fight = run.contention
        wrong = sum(n != 1 for n in fight.winners) + sum(n != 1 for n in fight.rows)
        measured = f"201s per slot {list(fight.winners)}, rows {list(fight.rows)}"
        return Reading(wrong, measured, "not exactly one")


class DoubleBookings(OfMainRun):
    def of(self, run: ScenarioRun) -> Reading | None:
        if run.contention is None:
            return None
        found, rows = run.contention.double_bookings, run.contention.rows
        measured = f"{found} double bookings over {len(rows)} slots (rows per slot {list(rows)})"
        return Reading(found, measured)


class OpenLoopMisses:
    """The mixed targets at a fixed arrival rate, from the scheduled time: p95 and p99, the
    rate kept up with, nothing dropped, no errors; the value is how many of them missed."""

    def read(self, figures: Figures, scenario: str, at: Occasion) -> Reading | None:
        run = at.run
        if run is None or run.open_loop is None or run.scenario != scenario:
            return None
        o, r = run.open_loop, run.result
        misses = []
        if r.latency.p95 > OPEN_LOOP_P95_MS:
            misses.append(f"p95 {_below(r.latency.p95, OPEN_LOOP_P95_MS)}")
        if r.latency.p99 > OPEN_LOOP_P99_MS:
            misses.append(f"p99 {_below(r.latency.p99, OPEN_LOOP_P99_MS)}")
        if r.throughput < KEPT_UP * o.rate:
            misses.append(f"achieved {_at_least(r.throughput, o.rate)}")
        if o.dropped:
            misses.append(f"{o.dropped:,} dropped")
        if r.errors:
            misses.append(f"{r.errors:,} errors")
        measured = (
            f"p95 {millis(r.latency.p95)} ms, p99 {millis(r.latency.p99)} ms, "
            f"{r.throughput:,.0f} req/s achieved, {o.dropped:,} dropped, "
            f"errors {r.error_summary()}"
        )
        return Reading(len(misses), measured, "; ".join(misses))


class ScaleRatio:
    """The larger of the p50 and p95 ratios, larger dataset over smaller."""

    def read(self, figures: Figures, scenario: str, at: Occasion) -> Reading | None:
        row = figures.scale.get(scenario)
        if row is None:
            return None
        value = max(row.p50_ratio, row.p95_ratio)
        return Reading(value, f"p50 x {row.p50_ratio:.2f}, p95 x {row.p95_ratio:.2f}")


@dataclass(frozen=True)
class Target:
    scenario: str
    metric: Metric
    comparison: Comparison
    threshold: float
    short: str
    description: str  # with {ms}, {rate}, {small} and {large} of the occasion
    each: Each = Each.RUN
    optional: bool = False  # no verdict at all, rather than "not measured", when absent


_OPEN_LOOP = (
    f"{OPEN_LOOP_SCENARIO} at {{rate:,.0f}} requests/s (open loop): p95 ≤ {OPEN_LOOP_P95_MS:g} "
    f"ms, p99 ≤ {OPEN_LOOP_P99_MS:g} ms, rate kept, nothing dropped"
)
AT_LEAST = Comparison.AT_LEAST
BELOW = Comparison.BELOW
AT_MOST = Comparison.AT_MOST
COUNTED = Comparison.COUNTED

# In the order of the report. Consecutive rows judged on the same kind of occasion are judged
# occasion by occasion (every anti-pattern at +0.5 ms, then every one at +1 ms).
TARGETS: tuple[Target, ...] = (
    Target(
        "availability-warm",
        Ratio("availability-warm ÷ constant"),
        AT_LEAST,
        0.5,
        "≥ 0.5 x constant",
        "warm availability ≥ 50 % of the constant endpoint",
    ),
    Target(
        "availability-cold",
        Ratio("availability-cold ÷ raw-availability"),
        AT_LEAST,
        0.6,
        "≥ 0.6 x raw",
        "cold availability ≥ 60 % of the raw asyncpg query",
    ),
    Target(
        "booking",
        Ratio("booking ÷ raw-booking"),
        AT_LEAST,
        0.25,
        "≥ 0.25 x raw",
        "bookings ≥ 25 % of the raw transaction",
    ),
    Target(
        "booking",
        Latency("p99"),
        BELOW,
        50.0,
        "p99 < 50 ms",
        "bookings p99 < 50 ms (at 64 clients)",
    ),
    Target(
        "contention",
        SlotsNotWonOnce(),
        AT_MOST,
        0,
        "one winner per slot",
        "contention: exactly one winner per slot",
    ),
    Target("contention", Latency("p99"), BELOW, 100.0, "p99 < 100 ms", "contention p99 < 100 ms"),
    Target("mixed", Throughput(), AT_LEAST, 1500, "≥ 1,500 req/s", "mixed ≥ 1,500 requests/s"),
    Target("mixed", Latency("p95"), AT_MOST, 40.0, "p95 ≤ 40 ms", "mixed p95 ≤ 40 ms"),
    Target("mixed", Latency("p99"), AT_MOST, 100.0, "p99 ≤ 100 ms", "mixed p99 ≤ 100 ms"),
    Target("mixed", Errors(), AT_MOST, 0, "no errors", "mixed: no errors", optional=True),
    *(
        Target(
            name,
            Ratio(label),
            AT_LEAST,
            ANTI_PATTERN_FACTOR,
            f"≥ {ANTI_PATTERN_FACTOR:g} x anti-pattern",
            f"{name} ≥ {ANTI_PATTERN_FACTOR:g}x its anti-pattern's throughput{where}",
            each,
        )
        for each, where in ((Each.RUN, ""), (Each.LATENCY, ", database +{ms:g} ms each way"))
        for name, label in ANTI_PATTERNS
    ),
    Target(
        OPEN_LOOP_SCENARIO,
        OpenLoopMisses(),
        AT_MOST,
        0,
        f"p95 ≤ {OPEN_LOOP_P95_MS:g} ms, p99 ≤ {OPEN_LOOP_P99_MS:g} ms, rate kept",
        _OPEN_LOOP,
        Each.RATE,
        optional=True,
    ),
    Target(
        "naive-contention",
        DoubleBookings(),
        COUNTED,
        0,
        "check-then-insert lets double bookings through (counted, not a target)",
        "check-then-insert lets double bookings through (counted, not a target)",
        optional=True,
    ),
    *(
        Target(
            name,
            ScaleRatio(),
            AT_MOST,
            SCALE_FACTOR,
            f"≤ {SCALE_FACTOR:g} x smaller dataset",
            f"{name} at {{large}} ≤ {SCALE_FACTOR:g}x {{small}} (p50 and p95)",
            Each.SCALE,
            optional=True,
        )
        for name in SCALE_SCENARIOS
    ),
)


def _figures(report: BenchReport) -> Figures:
    medians = median_table(report)
    main = report.dataset.label
    by_latency = {
        ms: dict(ratios(report, ms, LATENCY_RATIOS)) for ms in report.config.proxied_latencies
    }
    return Figures(
        runs={r.scenario: r for r in medians.values() if is_main(r, main) and not r.skipped},
        ratios={0.0: dict(ratios(report)), **by_latency},
        open_loop=[
            r
            for r in medians.values()
            if r.open_loop is not None and not r.skipped and r.dataset in ("", main)
        ],
        scale={row.scenario: row for row in scale_rows(report)},
    )


def _occasions(each: Each, report: BenchReport, figures: Figures) -> Iterator[Occasion]:
    if each is Each.RUN:
        yield Occasion(each)
    elif each is Each.LATENCY:
        yield from (Occasion(each, latency_ms=ms) for ms in report.config.proxied_latencies)
    elif each is Each.RATE:
        yield from (Occasion(each, run=run) for run in figures.open_loop)
    elif report.scale_dataset is not None:
        yield Occasion(each, small=report.dataset.label, large=report.scale_dataset.label)


def _judge(target: Target, at: Occasion, figures: Figures) -> Verdict | None:
    text, row = at.describe(target.description), at.label(target.scenario)
    reading = target.metric.read(figures, target.scenario, at)
    if reading is None:
        return None if target.optional else Verdict(text, target.short, row, "-", None)
    shortfall = reading.shortfall
    if shortfall is None:
        shortfall = target.comparison.shortfall(reading.value, target.threshold)
    met = target.comparison.holds(reading.value, target.threshold)
    return Verdict(text, target.short, row, reading.measured, met, shortfall)


def verdicts(report: BenchReport, targets: Sequence[Target] = TARGETS) -> list[Verdict]:
    """Every row of `targets` judged on each of its occasions in `report`."""
    figures = _figures(report)
    found = []
    for each, rows in itertools.groupby(targets, key=lambda target: target.each):
        group = list(rows)
        for at in _occasions(each, report, figures):
            found += [_judge(target, at, figures) for target in group]
    return [verdict for verdict in found if verdict is not None]
