"""The outbox relay: committed events -> ARQ jobs (audit F9, F10).

Several relays may run at once (one per worker process): `FOR UPDATE SKIP LOCKED` gives each
its own rows. An event is marked published in the same transaction that claimed it, after its
job was enqueued; a crash in between leaves it unpublished and it is enqueued again under the
same job id, which ARQ refuses as a duplicate. The job id also carries the delivery attempt,
so an event the sweeper hands over again (its job was lost) gets a fresh job.
"""

from __future__ import annotations

import asyncio
import logging

from arq.connections import ArqRedis

from app.kit import outbox
from app.kit.db import Database

logger = logging.getLogger("carebook.outbox")

HANDLE_EVENT = "handle_event"


def job_id(event_id: int, attempt: int) -> str:
    return f"outbox:{event_id}:{attempt}"


class OutboxRelay:
    def __init__(
        self,
        database: Database,
        queue: ArqRedis,
        *,
        batch_size: int = 100,
        poll_seconds: float = 0.5,
        max_backoff_seconds: float = 10.0,
    ) -> None:
        self.database = database
        self.queue = queue
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.max_backoff_seconds = max_backoff_seconds

    async def relay_once(self) -> int:
        """Publish one batch; the number of events handed to the queue."""
        async with self.database.unit_of_work() as session:
            rows = await outbox.claim_unpublished(session, self.batch_size)
            for row in rows:
                await self.queue.enqueue_job(
                    HANDLE_EVENT, row.id, _job_id=job_id(row.id, row.attempts + 1)
                )
            if rows:
                await outbox.mark_published(session, [row.id for row in rows])
        return len(rows)

    async def run(self) -> None:
        """Relay until cancelled: drain full batches at once, otherwise poll; back off on
        errors (Redis or the database down) without ever giving up."""
        backoff = self.poll_seconds
        while True:
            try:
                published = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "outbox relay failed; retrying",
                    extra={"error": type(exc).__name__, "retry_in_s": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_seconds)
                continue
            backoff = self.poll_seconds
            if published < self.batch_size:
                await asyncio.sleep(self.poll_seconds)
