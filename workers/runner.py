"""Run the ARQ worker inside the current event loop (embedded mode) or as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq.worker import Worker
from redis.exceptions import RedisError

from app.settings import Settings
from workers.settings import shutdown, worker_options

logger = logging.getLogger("carebook.worker")

RESTART_MAX_SECONDS = 30.0


def build_worker(settings: Settings, *, handle_signals: bool) -> Worker:
    return Worker(**worker_options(settings), handle_signals=handle_signals)


async def run_worker(
    settings: Settings, *, restart_max_seconds: float = RESTART_MAX_SECONDS
) -> None:
    """Run until cancelled; used by `carebook serve` in embedded mode.

    ARQ's worker stops when it loses Redis. A separate worker process is restarted by its
    supervisor; this one has none, so it rebuilds the worker itself, backing off, until Redis
    answers again. Nothing is lost meanwhile: events wait in the outbox.
    """
    delay = min(1.0, restart_max_seconds)
    while True:
        worker = build_worker(settings, handle_signals=False)
        logger.info("in-process worker started")
        try:
            await worker.main()
        except (RedisError, OSError) as error:
            logger.warning(
                "worker lost redis; restarting",
                extra={"error": type(error).__name__, "retry_in_s": delay},
            )
        finally:
            await _close(worker)
        await asyncio.sleep(delay)
        delay = min(delay * 2, restart_max_seconds)


async def _close(worker: Worker) -> None:
    try:
        await worker.close()
    except (RedisError, OSError):
        # close() gave up at its Redis call, before its own shutdown hook.
        with contextlib.suppress(Exception):
            await shutdown(worker.ctx)
