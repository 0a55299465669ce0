"""Push and reminder jobs. Each takes ids, re-reads its rows and is safe to run twice.

Every push is first a row in the user's in-app feed (unique `dedupe_key`), then a delivery job
that pushes it to each of the user's devices and sets `pushed_at`. FCM has no idempotency key,
so a delivery cut off between FCM's answer and `pushed_at` pushes again on its re-run: pushes
are at least once, the feed exactly once.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.connections import ArqRedis

from app.appointments import service as appointments
from app.appointments.events import Topic
from app.integrations.fcm import Fcm
from app.kit.db import Database
from app.kit.jobs import enqueue, is_last_try, retry_later, rotation, unknown_jobs
from app.kit.outbox import Event
from app.kit.resilience import PermanentFailure, TransientFailure
from app.models import AppointmentStatus
from app.notifications import repository, service
from app.settings import Settings

logger = logging.getLogger("carebook.notifications")

DELIVER = "deliver_notification"
SEND_REMINDER = "send_reminder"
CATCH_UP_BATCH = 1000
# Notices that only ever live in the feed (staff alerts): no push is owed for them.
IN_APP_ONLY_KINDS = ("video_failed",)
# A push not delivered a day after its notice is not planned again (its news is stale).
RECOVERY_HORIZON = timedelta(days=1)
RECOVERY_BATCH = 500


def _instant(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def push_job_id(notification_id: uuid.UUID | str) -> str:
    return f"push:{notification_id}"


async def deliver_later(queue: ArqRedis, notification_ids: list[uuid.UUID]) -> None:
    for notification_id in notification_ids:
        await enqueue(queue, DELIVER, str(notification_id), job_id=push_job_id(notification_id))


async def plan_appointment_messages(ctx: dict[str, Any], event: Event) -> None:
    """Outbox handler: the patient's feed row and push for a booking, cancellation or move
    (and the provider's, when the patient did it), then the visit's reminders."""
    database: Database = ctx["database"]
    appointment_id = uuid.UUID(event.payload["appointment_id"])
    async with database.unit_of_work() as session:
        view = await appointments.view_for_job(session, appointment_id)
        if view is None:
            return
        appointment = view.Appointment
        starts_at = _instant(event.payload.get("starts_at")) or appointment.starts_at
        prefix = f"event:{event.id}"
        ids: list[uuid.UUID] = []
        message = service.appointment_message(event.topic, view, starts_at)
        if message is not None:
            ids += await service.notify(session, [appointment.patient_id], message, prefix)
        message = service.provider_message(event.topic, view, starts_at)
        if message is not None and event.payload.get("by") == str(appointment.patient_id):
            ids += await service.notify(session, [appointment.provider_id], message, prefix)
    await deliver_later(ctx["redis"], ids)
    if event.topic in (Topic.BOOKED, Topic.RESCHEDULED):
        await schedule_reminders(ctx["redis"], ctx["settings"], appointment_id, starts_at)


async def schedule_reminders(
    queue: ArqRedis, settings: Settings, appointment_id: uuid.UUID, starts_at: datetime
) -> None:
    """Deferred jobs, one per lead time still ahead. They re-check the visit when they run, so
    a cancelled or moved visit's old reminders do nothing."""
    now = datetime.now(UTC)
    for lead in settings.reminder_lead_minutes:
        due = starts_at - timedelta(minutes=lead)
        if due > now:
            await enqueue(
                queue,
                SEND_REMINDER,
                str(appointment_id),
                lead,
                starts_at.isoformat(),
                job_id=service.reminder_key(appointment_id, lead, starts_at),
                defer_until=due,
            )


async def send_reminder(
    ctx: dict[str, Any], appointment_id: str, lead_minutes: int, starts_at: str
) -> str:
    database: Database = ctx["database"]
    planned_start = datetime.fromisoformat(starts_at)
    async with database.unit_of_work() as session:
        view = await appointments.view_for_job(session, uuid.UUID(appointment_id))
        if view is None:
            return "skipped: appointment gone"
        appointment = view.Appointment
        if appointment.status != AppointmentStatus.BOOKED:
            return f"skipped: appointment {appointment.status}"
        if appointment.starts_at != planned_start:
            return "skipped: appointment moved"
        if appointment.starts_at <= datetime.now(UTC):
            return "skipped: visit started"
        ids = await service.notify(
            session,
            [appointment.patient_id],
            service.reminder_message(view, lead_minutes),
            service.reminder_key(appointment.id, lead_minutes, appointment.starts_at),
        )
    # Delivered by its own job, as every push is: one job id per notification is what lets
    # the recovery pass re-plan a lost push without ever doubling one in flight.
    await deliver_later(ctx["redis"], ids)
    return "push planned"


async def deliver_notification(ctx: dict[str, Any], notification_id: str) -> str:
    database: Database = ctx["database"]
    fcm: Fcm = ctx["fcm"]
    async with database.reading(primary=True) as session:
        notification = await repository.pending_push(session, uuid.UUID(notification_id))
        if notification is None:
            return "gone"
        if notification.pushed_at is not None:
            return "already pushed"
        tokens = await repository.device_tokens(session, notification.user_id)
    if not fcm.enabled:
        return "in-app only: push disabled"
    data = {
        **{key: str(value) for key, value in notification.data.items()},
        "notification_id": str(notification.id),
        "dedupe_key": notification.dedupe_key or str(notification.id),
    }
    dead: list[str] = []
    try:
        for token in tokens:
            try:
                result = await fcm.send(token, notification.title, notification.body, data)
            except PermanentFailure as error:
                # FCM refused this message for this device; another device may still take it.
                logger.error("push refused by fcm", extra={"status": error.status_code})
                continue
            if result.remove_token:
                dead.append(token)
    except TransientFailure as error:
        if not is_last_try(ctx, ctx["settings"]):
            raise retry_later(ctx, ctx["settings"], error) from error
        logger.error("push given up after %d tries", ctx.get("job_try", 1))
        return "gave up"
    finally:
        if dead:
            async with database.unit_of_work() as session:
                for token in dead:
                    await repository.delete_device(session, token)
    async with database.unit_of_work() as session:
        await repository.mark_pushed(session, notification.id)
    return f"pushed to {len(tokens) - len(dead)} of {len(tokens)} devices"


async def catch_up_reminders(ctx: dict[str, Any]) -> int:
    """Cron: reminders whose time came while no worker ran, or whose deferred job was lost with
    Redis. Enqueued under the reminder's own job id, so one still queued is not doubled."""
    database: Database = ctx["database"]
    settings: Settings = ctx["settings"]
    leads = settings.reminder_lead_minutes  # longest first
    now = datetime.now(UTC)
    missed: list[tuple[int, Any]] = []
    async with database.reading(primary=True) as session:
        for lead, next_lead in zip(leads, [*leads[1:], 0], strict=True):
            rows = await repository.missed_reminders(
                session, lead=lead, next_lead=next_lead, now=now, limit=CATCH_UP_BATCH
            )
            missed += [(lead, row) for row in rows]
    for lead, row in missed:
        await enqueue(
            ctx["redis"],
            SEND_REMINDER,
            str(row.id),
            lead,
            row.starts_at.isoformat(),
            job_id=service.reminder_key(row.id, lead, row.starts_at),
        )
    if missed:
        logger.info("reminders caught up", extra={"count": len(missed)})
    return len(missed)


async def recover_pushes(ctx: dict[str, Any]) -> int:
    """Recovery pass: pushes owed past the grace period whose job Redis does not know (lost
    with Redis, or given up on and forgotten with its result an hour later) are planned again
    under their own job id, so a push queued, deferred or running is never doubled."""
    fcm: Fcm = ctx["fcm"]
    if not fcm.enabled:
        return 0
    database: Database = ctx["database"]
    settings: Settings = ctx["settings"]
    now = datetime.now(UTC)
    cursor = rotation(ctx, "pushes")
    async with database.reading(primary=True) as session:
        rows = await repository.unpushed(
            session,
            created_after=now - RECOVERY_HORIZON,
            created_before=now - timedelta(seconds=settings.recovery_grace_seconds),
            after=cursor.after,
            skip_kinds=IN_APP_ONLY_KINDS,
            limit=RECOVERY_BATCH,
        )
    cursor.advance(rows, RECOVERY_BATCH, lambda row: (row.created_at, row.id))
    owed = {push_job_id(row.id): row.id for row in rows}
    planned = 0
    for job_id in await unknown_jobs(ctx["redis"], list(owed)):
        planned += await enqueue(ctx["redis"], DELIVER, str(owed[job_id]), job_id=job_id)
    if planned:
        logger.warning("owed pushes planned again", extra={"count": planned})
    return planned
