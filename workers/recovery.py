"""The recovery pass: whatever is still owed is found again from PostgreSQL alone.

Redis holds only jobs in flight, so a Redis restarted empty (or flushed) forgets them: an event
handed to the queue, a push retrying while FCM is down, a room waiting for VideoSDK. What is
owed stays on record in PostgreSQL (an outbox row published but not processed, a notification
with `pushed_at` NULL, a visit whose room is `pending`), and this cron, every few seconds, asks
Redis about each such item older than the grace period: one Redis knows nothing of (no job, no
kept result) is planned again under the same deterministic job id, so work still queued,
deferred or running is never doubled. Each pass is one indexed query and one Redis round trip
per batch. Reminders due while their deferred job was lost come back through the reminder
catch-up cron (every minute), failed rooms through the video retry cron.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from app.kit import outbox
from app.kit.db import Database
from app.kit.jobs import unknown_jobs
from app.notifications.tasks import recover_pushes
from app.settings import Settings
from app.video.tasks import recover_rooms
from workers.events import MAX_ATTEMPTS
from workers.outbox import job_id

logger = logging.getLogger("carebook.worker")

RECOVERY_BATCH = 500


async def recover_events(ctx: dict[str, Any]) -> int:
    """Events handed to the queue whose job Redis does not know are handed over again now (the
    relay enqueues them under their next attempt's id). One whose job Redis knows (queued,
    running, or failed with its result kept) is the sweeper's, after 5 minutes."""
    database: Database = ctx["database"]
    settings: Settings = ctx["settings"]
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.recovery_grace_seconds)
    async with database.reading(primary=True) as session:
        rows = await outbox.in_flight(session, cutoff, MAX_ATTEMPTS, RECOVERY_BATCH)
    deliveries = {job_id(row.id, row.attempts): (row.id, row.attempts) for row in rows}
    lost = [deliveries[job] for job in await unknown_jobs(ctx["redis"], list(deliveries))]
    if not lost:
        return 0
    async with database.unit_of_work() as session:
        republished = await outbox.republish(session, lost)
    logger.warning("events lost from the queue handed over again", extra={"count": republished})
    return republished


PASSES: list[tuple[str, Callable[[dict[str, Any]], Awaitable[int]]]] = [
    ("events", recover_events),
    ("pushes", recover_pushes),
    ("rooms", recover_rooms),
]


async def recover_owed_work(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron: every pass in turn; one that fails (a statement timeout, say) does not keep the
    others from running, and the next tick tries it again."""
    planned: dict[str, int] = {}
    for name, recover in PASSES:
        try:
            planned[name] = await recover(ctx)
        except Exception as error:
            logger.warning(
                "recovery pass failed; the next tick retries it",
                extra={"pass": name, "error": type(error).__name__},
            )
            planned[name] = -1
    return planned
