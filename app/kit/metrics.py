"""Prometheus metrics (audit F14, F18): every definition lives here; the code that owns the
behaviour records it. Names follow Prometheus conventions (`_total`, `_seconds`, base units).

Multiprocess: when `PROMETHEUS_MULTIPROC_DIR` is set (`carebook serve --workers N` sets it for
N > 1), prometheus_client keeps each process's values in files there and `/metrics` merges them
with `MultiProcessCollector`, so any worker answering the scrape reports all of them. Every gauge
declares how processes combine (`multiprocess_mode`). What describes the database rather than a
process (the outbox backlog) is read at scrape time by whichever process answers
(`app.health.metrics`, which also serves `/metrics`): this module imports nothing of the app,
so that everything can import it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Request latency buckets: a cache hit is ~1 ms, a booking ~10-50 ms, the timeout 5 s.
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- HTTP (recorded by app.kit.middleware.RequestContextMiddleware) -------------------------

HTTP_REQUESTS = Counter(
    "carebook_http_requests_total",
    "Finished HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "carebook_http_request_duration_seconds",
    "HTTP request duration by method, route template and status.",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "carebook_http_requests_in_flight",
    "HTTP requests being served right now.",
    multiprocess_mode="livesum",
)
# The route label of requests that matched no route (404s, and what is refused before routing).
UNMATCHED_ROUTE = "unmatched"

# --- Database pool (recorded by app.kit.db.InstrumentedPool) -------------------------------

DB_POOL_SIZE = Gauge(
    "carebook_db_pool_size",
    "Configured pool size per engine (summed over the pools of a process and over processes).",
    ["engine"],
    multiprocess_mode="livesum",
)
DB_POOL_IN_USE = Gauge(
    "carebook_db_pool_connections_in_use",
    "Connections checked out of the pool per engine.",
    ["engine"],
    multiprocess_mode="livesum",
)
DB_POOL_OVERFLOW = Gauge(
    "carebook_db_pool_overflow_connections",
    "Connections open above the pool size per engine.",
    ["engine"],
    multiprocess_mode="livesum",
)
DB_POOL_WAITS = Counter(
    "carebook_db_pool_waits_total",
    "Checkouts that found no free connection and no overflow room, and had to wait.",
    ["engine"],
)
DB_POOL_WAIT_SECONDS = Histogram(
    "carebook_db_pool_wait_seconds",
    "How long checkouts that had to wait waited (timeouts included).",
    ["engine"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DB_SLOW_STATEMENTS = Counter(
    "carebook_db_slow_statements_total",
    "Statements that ran longer than CAREBOOK_SLOW_STATEMENT_MS.",
    ["engine"],
)

# --- Cache, rate limits, bookings, idempotency ---------------------------------------------

CACHE_REQUESTS = Counter(
    "carebook_cache_requests_total",
    "Response-cache lookups by cache and result (hit, miss).",
    ["cache", "result"],
)
REDIS_FAILURES = Counter(
    "carebook_redis_failures_total",
    "Redis calls of the cache and the rate limiter that failed, by kind: `error` (counts "
    "towards opening the circuit) or `pool_exhausted` (the connection pool stayed busy for "
    "its whole wait: Redis answers, this process asks too much at once; never opens it).",
    ["kind"],
)
REDIS_CIRCUIT_OPENINGS = Counter(
    "carebook_redis_circuit_openings_total",
    "Times the Redis circuit opened: the process then serves without Redis until a probe "
    "succeeds, and bumps the cache generation when it does.",
)
# Only the reads: counting every hit would cost the hot path more than the lookup itself.
PRINCIPAL_READS = Counter(
    "carebook_principal_reads_total",
    "Principal-cache misses: user-state reads from PostgreSQL by the authentication step.",
)
RATE_LIMIT_REJECTIONS = Counter(
    "carebook_rate_limit_rejections_total",
    "Requests refused with 429, by policy.",
    ["policy"],
)
BOOKING_CONFLICTS = Counter(
    "carebook_booking_conflicts_total",
    "Bookings and reschedules refused with 409 slot_unavailable (the slot was taken).",
)
IDEMPOTENT_REPLAYS = Counter(
    "carebook_idempotent_replays_total",
    "Retries answered from a stored response (Idempotent-Replayed: true).",
)

# --- Jobs (recorded by workers.telemetry.instrumented) -------------------------------------

JOB_RUNS = Counter(
    "carebook_job_runs_total",
    "Finished job runs by job, whatever their outcome.",
    ["job"],
)
JOB_FAILURES = Counter(
    "carebook_job_failures_total",
    "Job runs that raised (timeouts and cancellations included), not counting planned retries.",
    ["job"],
)
JOB_RETRIES = Counter(
    "carebook_job_retries_total",
    "Job runs that asked to run again later (a third party was unavailable).",
    ["job"],
)
JOB_DURATION = Histogram(
    "carebook_job_duration_seconds",
    "Job run duration by job.",
    ["job"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)

# --- Third parties (recorded by app.kit.resilience) ----------------------------------------

EXTERNAL_REQUESTS = Counter(
    "carebook_external_requests_total",
    "Attempts of outgoing third-party calls, by service and outcome.",
    ["service", "outcome"],
)
EXTERNAL_DURATION = Histogram(
    "carebook_external_request_duration_seconds",
    "Duration of attempts of outgoing third-party calls that reached the network.",
    ["service"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BREAKER_STATE = Gauge(
    "carebook_circuit_breaker_state",
    "Circuit breaker state per third-party service: 0 closed, 1 half-open, 2 open "
    "(the worst over the live processes).",
    ["service"],
    multiprocess_mode="livemax",
)


def exposition(extra: Collector | None = None) -> bytes:
    """The text exposition of this process (or, in multiprocess mode, of all of them)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if extra is not None:
        own = CollectorRegistry(auto_describe=False)
        own.register(extra)
        body += generate_latest(own)
    return body


def mark_process_dead() -> None:
    """Drop this process's live gauges from the multiprocess files (on shutdown)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
