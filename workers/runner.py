"""Run the ARQ worker inside the current event loop (embedded mode) or as its own process."""

from __future__ import annotations

import logging

from arq.worker import Worker

from app.settings import Settings
from workers.settings import worker_options

logger = logging.getLogger("carebook.worker")


def build_worker(settings: Settings, *, handle_signals: bool) -> Worker:
    return Worker(**worker_options(settings), handle_signals=handle_signals)


async def run_worker(settings: Settings) -> None:
    """Run until cancelled; used by `carebook serve` in embedded mode."""
    worker = build_worker(settings, handle_signals=False)
    logger.info("in-process worker started")
    try:
        await worker.main()
    finally:
        await worker.close()
