"""Metrics and spans for every job run: registered jobs and crons are wrapped here.

ARQ calls the wrapper like the job itself; it pops the `traceparent` keyword that
`app.kit.jobs.enqueue` adds while a span is active, runs the job inside a consumer span linked to
it, and counts the run, its failure or planned retry, and its duration by job name.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from arq.typing import WorkerCoroutine

from app.kit import telemetry
from app.kit.metrics import JOB_DURATION, JOB_FAILURES, JOB_RETRIES, JOB_RUNS


def instrumented(job: Callable[..., Awaitable[Any]]) -> WorkerCoroutine:
    name = job.__name__
    # Series exist at 0 from the start, so rates and "no failures" can be read before any.
    for counter in (JOB_RUNS, JOB_FAILURES, JOB_RETRIES):
        counter.labels(name)

    @functools.wraps(job)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        cause = kwargs.pop(telemetry.JOB_TRACE_KWARG, None)
        started = time.perf_counter()
        attributes = {"carebook.job": name, "carebook.job_try": int(ctx.get("job_try", 1))}
        try:
            with telemetry.job_span(f"job {name}", cause=cause, attributes=attributes):
                return await job(ctx, *args, **kwargs)
        except Retry:
            JOB_RETRIES.labels(name).inc()
            raise
        except BaseException:
            # Errors, timeouts (ARQ cancels the job) and shutdowns alike.
            JOB_FAILURES.labels(name).inc()
            raise
        finally:
            JOB_RUNS.labels(name).inc()
            JOB_DURATION.labels(name).observe(time.perf_counter() - started)

    return run
