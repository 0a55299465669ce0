"""Shared machinery for ARQ jobs: enqueueing under deterministic ids, and retry scheduling.

ARQ runs a job at least once. A job enqueued under an id that is still queued, running or has a
kept result is refused, so re-planning the same effect (an event handled twice) adds nothing.
Jobs that call a third party retry on the worker's schedule (`Retry`) once the HTTP client's
quick retries are spent, and give up on their last try with a recorded outcome instead of
raising into ARQ's "max retries exceeded".
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from arq import Retry
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix

from app.kit import telemetry
from app.kit.resilience import CircuitOpen, TransientFailure
from app.settings import Settings

logger = logging.getLogger("carebook.jobs")


async def enqueue(
    queue: ArqRedis,
    function: str,
    *args: Any,
    job_id: str,
    defer_until: datetime | None = None,
) -> bool:
    """Enqueue once per `job_id`; False when a job with that id already exists.

    While a span is active its `traceparent` travels with the job, so the job's span links
    back to the work that planned it (see `workers.telemetry.instrumented`)."""
    kwargs: dict[str, Any] = {}
    if (traceparent := telemetry.current_traceparent()) is not None:
        kwargs[telemetry.JOB_TRACE_KWARG] = traceparent
    job = await queue.enqueue_job(
        function, *args, _job_id=job_id, _defer_until=defer_until, **kwargs
    )
    return job is not None


async def unknown_jobs(queue: ArqRedis, job_ids: list[str]) -> list[str]:
    """The ids Redis has neither a job (queued, deferred, running) nor a kept result for: what
    a Redis restart or flush lost. One round trip for the lot. ARQ writes the result and drops
    the job in one transaction, so a job never looks unknown while it finishes."""
    if not job_ids:
        return []
    async with queue.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(job_key_prefix + job_id, result_key_prefix + job_id)
        known = await pipe.execute()
    return [job_id for job_id, count in zip(job_ids, known, strict=True) if not count]


Row = TypeVar("Row")
Position = tuple[datetime, uuid.UUID]


@dataclass
class Rotation:
    """A keyset cursor over a recovery pass's work list that wraps around at its end.

    Each pass reads the batch after the last one, so rows that stay owed for long (their jobs
    still retrying) cannot hide the rows behind them from a bounded batch."""

    after: Position | None = None

    def advance(self, rows: Sequence[Row], limit: int, key: Callable[[Row], Position]) -> None:
        self.after = key(rows[-1]) if rows and len(rows) >= limit else None


def rotation(ctx: dict[str, Any], name: str) -> Rotation:
    """This worker's cursor for the pass `name` (kept in the worker's context; a pass called
    with a context of its own starts from the beginning)."""
    cursors: dict[str, Rotation] = ctx.get("recovery_cursors", {})
    return cursors.setdefault(name, Rotation())


def job_try(ctx: dict[str, Any]) -> int:
    return int(ctx.get("job_try", 1))


def is_last_try(ctx: dict[str, Any], settings: Settings) -> bool:
    return job_try(ctx) >= settings.job_max_tries


def retry_later(ctx: dict[str, Any], settings: Settings, error: TransientFailure) -> Retry:
    """A `Retry` with exponential backoff and jitter; an open breaker is waited out, and a
    service's own `Retry-After` is honoured when it asks for longer."""
    attempt = job_try(ctx)
    backoff = min(
        settings.job_retry_base_seconds * 2 ** (attempt - 1), settings.job_retry_max_seconds
    )
    delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
    if isinstance(error, CircuitOpen):
        delay = max(delay, settings.breaker_reset_seconds)
    if error.retry_after is not None:
        delay = max(delay, min(error.retry_after, settings.job_retry_max_seconds))
    logger.warning(
        "%s unavailable (%s); job retries in %.1fs",
        error.service,
        error,
        delay,
        extra={"service": error.service, "job_try": attempt, "retry_in_s": round(delay, 2)},
    )
    return Retry(defer=delay)
