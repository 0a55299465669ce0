"""Stopping background tasks for certain, even when a library swallows a cancellation.

A cancellation that arrives while a Redis or database client is mid-call can end in that
client catching it and returning normally (seen with the outbox relay and ARQ's poll loop after
a Redis outage): the task then simply goes on, and whoever awaits it waits forever. Both
helpers here keep cancelling until the task has really finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

RECANCEL_SECONDS = 0.5


async def stop_task(task: asyncio.Task[object]) -> None:
    """Cancel `task` and wait until it has finished, cancelling it again while it runs on."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    if not task.cancelled():
        task.exception()  # retrieved: an error it ended with is the stopper's to ignore


async def run_cancellably(work: Awaitable[T], *, name: str) -> T:
    """Await `work` in a task of its own; when the caller is cancelled, stop it for certain
    (`stop_task`) before the cancellation goes on. Its result or error is the caller's."""
    task = asyncio.ensure_future(work)
    task.set_name(name)
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        await stop_task(task)
        raise
    return task.result()
