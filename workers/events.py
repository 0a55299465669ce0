"""The job that handles one outbox event, and the table of who handles which topic.

ARQ runs a job at least once: the job re-reads its event, skips it when it was already
processed, and every handler is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from app import invalidation
from app.analytics import tasks as analytics_tasks
from app.appointments import events as appointment_events
from app.kit import outbox, telemetry
from app.kit.cache import Cache
from app.kit.db import Database
from app.kit.idempotency import expire_keys
from app.kit.outbox import Event
from app.notifications import tasks as notification_tasks
from app.video import tasks as video_tasks

logger = logging.getLogger("carebook.worker")

Handler = Callable[[dict[str, Any], Event], Awaitable[None]]

# A delivery is considered lost when its job has not finished this long after publishing.
LOST_AFTER = timedelta(minutes=5)
MAX_ATTEMPTS = outbox.DEAD_LETTER_ATTEMPTS
KEEP_PROCESSED = timedelta(days=7)


async def invalidate_cache(ctx: dict[str, Any], event: Event) -> None:
    """Bump cache versions from the durable event: the API processes bumped them already at
    commit, but a bump lost to a Redis outage is repeated here once Redis is back."""
    cache: Cache = ctx["cache"]
    await cache.on_event(event.topic, event.payload)


# Handlers only plan: they write rows and enqueue effect jobs under ids derived from the event,
# so an event handled twice plans nothing twice, and one slow third party delays no other effect.
HANDLERS: list[tuple[tuple[str, ...], Handler]] = [
    (invalidation.TOPICS, invalidate_cache),
    (appointment_events.VISIT_CHANGES, notification_tasks.plan_appointment_messages),
    (appointment_events.VISIT_CHANGES, video_tasks.plan_video),
    (appointment_events.COUNTED, analytics_tasks.refresh_clinic_stats),
]


async def handle_event(ctx: dict[str, Any], event_id: int) -> str:
    database: Database = ctx["database"]
    async with database.reading(primary=True) as session:
        event = await outbox.load_event(session, event_id)
    if event is None:
        return "gone"
    if event.processed_at is not None:
        return "already processed"
    payload = dict(event.payload)
    cause = payload.pop(telemetry.TRACE_KEY, None)
    # Linked to the request that emitted the event; effect jobs planned here link to this span.
    with telemetry.job_span(
        f"outbox {event.topic}",
        cause=cause,
        attributes={"carebook.outbox.event_id": event.id, "carebook.outbox.topic": event.topic},
    ):
        for topics, handler in HANDLERS:
            if event.topic.startswith(topics):
                await handler(ctx, Event(event.id, event.topic, payload))
        async with database.unit_of_work() as session:
            await outbox.mark_processed(session, event_id)
    return "processed"


async def sweep_outbox(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron: hand lost deliveries over again, count dead letters, drop old processed rows."""
    database: Database = ctx["database"]
    now = datetime.now(UTC)
    async with database.unit_of_work() as session:
        republished = await outbox.republish_lost(session, now - LOST_AFTER, MAX_ATTEMPTS)
        dead = await outbox.count_dead_letters(session, MAX_ATTEMPTS)
        deleted = await outbox.delete_processed(session, now - KEEP_PROCESSED)
    if dead:
        logger.error(
            "outbox events given up on after %d deliveries",
            MAX_ATTEMPTS,
            extra={"dead_letters": dead},
        )
    return {"republished": republished, "dead_letters": dead, "deleted": deleted}


async def expire_idempotency_keys(ctx: dict[str, Any]) -> int:
    """Cron: idempotency keys live 24 hours."""
    database: Database = ctx["database"]
    async with database.unit_of_work() as session:
        return await expire_keys(session)
