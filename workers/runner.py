"""Run the ARQ worker inside the current event loop (embedded mode) or as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from types import FrameType

from arq.worker import Worker
from redis.exceptions import RedisError

from app.kit.cancellation import run_cancellably
from app.settings import Settings
from workers.settings import shutdown, worker_options

logger = logging.getLogger("carebook.worker")

RESTART_MAX_SECONDS = 30.0


def build_worker(settings: Settings, *, handle_signals: bool) -> Worker:
    return Worker(**worker_options(settings), handle_signals=handle_signals)


async def run_worker(
    settings: Settings, *, restart_max_seconds: float = RESTART_MAX_SECONDS
) -> None:
    """Run until cancelled (`carebook worker`, and in-process under `carebook serve`).

    ARQ's worker stops when it loses Redis; this rebuilds it, backing off, until Redis answers
    again, so one outage does not need a process restart. Nothing is lost meanwhile: events
    wait in the outbox.
    """
    delay = min(1.0, restart_max_seconds)
    while True:
        worker = build_worker(settings, handle_signals=False)
        logger.info("worker started")
        try:
            # ARQ's poll loop can swallow a cancellation that lands in a Redis call.
            await run_cancellably(worker.main(), name="arq-worker")
        except (RedisError, OSError) as error:
            logger.warning(
                "worker lost redis; restarting",
                extra={"error": type(error).__name__, "retry_in_s": delay},
            )
        finally:
            await close_worker(worker)
        # A worker that got as far as its startup had Redis: a later outage starts over from
        # the shortest delay, so the worker is back within a second or two of Redis.
        if "database" in worker.ctx:
            delay = min(1.0, restart_max_seconds)
        await asyncio.sleep(delay)
        delay = min(delay * 2, restart_max_seconds)


async def run_until_signalled(settings: Settings) -> None:
    """`carebook worker`: `run_worker` until SIGTERM or SIGINT. Running jobs are cancelled and
    stay queued, so another worker runs them again (they are idempotent). The caller's signal
    handlers are back in place on return (the CLI stops the embedded servers after this)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:  # a second signal must not cut the shutdown short
            stopping = True
            loop.call_soon_threadsafe(task.cancel)

    # Not loop.add_signal_handler: closing the loop would reset SIGTERM to its default action,
    # death on the spot, until the caller had installed its handler again.
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await run_worker(settings)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    logger.info("worker stopped")


async def close_worker(worker: Worker) -> None:
    """Stop `worker` and run its shutdown hook (which stops the outbox relay and disposes the
    engines), whatever its running jobs do.

    ARQ's `Worker.close` cancels the running jobs, then gathers them without
    `return_exceptions`: a job running at that moment makes it raise CancelledError before the
    hook ever runs, leaving the relay polling. The jobs are cancelled and awaited here first,
    so `close` finds none. They stay queued and run again (they are idempotent)."""
    for task in worker.tasks.values():
        task.cancel()
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    worker.tasks.clear()
    try:
        await worker.close()
    except (RedisError, OSError):
        # close() gave up at its Redis call, before its own shutdown hook.
        with contextlib.suppress(Exception):
            await shutdown(worker.ctx)
