"""Leases on running jobs, so that a killed worker's jobs run again within seconds.

ARQ marks a running job with an in-progress key that lives for the worker's longest job timeout
plus 10 s (here 30 min, for the nightly statistics rebuild), and no worker starts a job while
its key exists. A worker killed mid-job (SIGKILL, OOM, a lost node) leaves its jobs queued but
untouchable that long. Here each job shortens its key to a lease as it starts, and the worker
renews the leases of the jobs it still runs; a dead worker renews nothing, so its jobs are
picked up again a lease later, with their try count raised. A worker whose event loop stalls
for longer than a lease may see a job run twice meanwhile, which jobs tolerate.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.exceptions import RedisError

logger = logging.getLogger("carebook.worker")

# Cron runs are left as ARQ runs them: each tick is a job of its own, not retried.
_CRON_PREFIX = "cron:"


class Leases:
    """The leases held by this worker, one per running job, renewed a third of a lease apart."""

    def __init__(self, redis: ArqRedis, seconds: float) -> None:
        self.redis = redis
        self.lease_ms = int(seconds * 1000)
        self.renew_every = seconds / 3
        # job id -> the ARQ task running it: a job whose task is done holds no lease.
        self.held: dict[str, asyncio.Task[Any]] = {}

    async def take(self, job_id: str) -> None:
        task = asyncio.current_task()
        if task is None or job_id.startswith(_CRON_PREFIX):
            return
        self.held[job_id] = task
        try:
            await self.redis.pexpire(in_progress_key_prefix + job_id, self.lease_ms)
        except (RedisError, OSError) as error:
            # The job still runs under ARQ's own (long) mark; finishing it needs Redis anyway.
            logger.warning("job lease not taken", extra={"error": type(error).__name__})

    async def renew(self) -> int:
        for job_id, task in list(self.held.items()):
            if task.done():
                del self.held[job_id]
        if not self.held:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in self.held:
                # PEXPIRE leaves a key already gone (the job just finished) gone.
                pipe.pexpire(in_progress_key_prefix + job_id, self.lease_ms)
            await pipe.execute()
        return len(self.held)

    async def run(self) -> None:
        """Renew until cancelled; a Redis error is logged and the next round tries again."""
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                logger.warning("job leases not renewed", extra={"error": type(error).__name__})


async def job_started(ctx: dict[str, Any]) -> None:
    """ARQ's `on_job_start` hook: the job's lease replaces ARQ's long in-progress mark."""
    leases: Leases | None = ctx.get("leases")
    if leases is not None:
        await leases.take(str(ctx["job_id"]))
