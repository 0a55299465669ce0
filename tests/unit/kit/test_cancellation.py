"""Stopping tasks that swallow their cancellation, as a client caught mid-call can."""

from __future__ import annotations

import asyncio

import pytest

from app.kit.cancellation import run_cancellably, stop_task


async def _swallows_cancellations(times: int) -> str:
    """Catches the first `times` cancellations and carries on, like a client that turns a
    cancellation mid-call into a normal return."""
    swallowed = 0
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed += 1
            if swallowed > times:
                raise


async def test_stop_task_cancels_again_until_the_task_is_done() -> None:
    task = asyncio.create_task(_swallows_cancellations(times=2))
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task), timeout=10)
    assert task.cancelled()


async def test_a_plain_cancel_would_leave_such_a_task_running() -> None:
    # The reason for stop_task: one cancel() is not enough.
    task = asyncio.create_task(_swallows_cancellations(times=1))
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done
    await stop_task(task)


async def test_run_cancellably_stops_its_work_when_the_caller_is_cancelled() -> None:
    work = _swallows_cancellations(times=2)
    caller = asyncio.create_task(run_cancellably(work, name="swallower"))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, timeout=10)
    assert all(t.get_name() != "swallower" for t in asyncio.all_tasks())


async def test_run_cancellably_returns_the_result_and_raises_the_error() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise OSError("redis went away")

    assert await run_cancellably(answer(), name="answer") == 42
    with pytest.raises(OSError, match="redis went away"):
        await run_cancellably(fail(), name="fail")
