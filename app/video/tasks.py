"""Video room jobs: one reconciler brings a visit's room in line with the visit.

An active visit gets a room (VideoSDK's create is idempotent on `customRoomId` = appointment id,
so a re-run or a lost answer never makes a second room); a cancelled visit's room is deleted
(the compensation of a booking that did not last). Rooms are not tied to a time, so a
rescheduled visit keeps its room. After the last try the visit is marked `failed` and the
clinic's staff are told in-app; the retry cron picks failed rooms up again.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.appointments import service as appointments
from app.integrations.videosdk import VideoSdk
from app.kit.db import Database
from app.kit.jobs import enqueue, is_last_try, retry_later, rotation, unknown_jobs
from app.kit.outbox import Event
from app.kit.resilience import (
    IntegrationError,
    InvalidResponse,
    PermanentFailure,
    TransientFailure,
)
from app.models import ACTIVE_STATUSES, AppointmentStatus, VideoStatus
from app.notifications import service as notifications
from app.settings import Settings
from app.video import repository

logger = logging.getLogger("carebook.video")

SYNC_ROOM = "sync_video_room"
# A pending room younger than this is still in its event's hands; the cron leaves it be.
RECONCILE_GRACE = timedelta(minutes=2)
RECONCILE_BATCH = 500
# Rooms of visits that ended longer ago than this are left alone (created or not, deleted or
# not): a refusal VideoSDK keeps answering is not retried forever.
RECONCILE_HORIZON = timedelta(days=1)
RECONCILE_EVERY_MINUTES = 5


def room_job_id(appointment_id: uuid.UUID | str, version: int) -> str:
    """One reconciliation per version of the visit: every change that can matter to the room
    (booking, cancellation, move) is a new version, and the recovery pass, reading the same
    version, re-plans a lost job under the very id of the one it replaces."""
    return f"video:{appointment_id}:v{version}"


async def plan_video(ctx: dict[str, Any], event: Event) -> None:
    """Outbox handler: reconcile the visit's room for its current version (an event handled
    late, after a newer change, plans the reconciliation of what the visit is now)."""
    database: Database = ctx["database"]
    appointment_id = event.payload["appointment_id"]
    async with database.reading(primary=True) as session:
        visit = await repository.room_state(session, uuid.UUID(appointment_id))
    if visit is None:
        return
    await enqueue(
        ctx["redis"], SYNC_ROOM, appointment_id, job_id=room_job_id(appointment_id, visit.version)
    )


async def sync_video_room(ctx: dict[str, Any], appointment_id: str) -> str:
    database: Database = ctx["database"]
    video: VideoSdk = ctx["videosdk"]
    if not video.enabled:
        return "video disabled"
    visit_id = uuid.UUID(appointment_id)
    async with database.reading(primary=True) as session:
        visit = await repository.room_state(session, visit_id)
    if visit is None:
        return "gone"
    if visit.status == AppointmentStatus.CANCELLED and visit.video_room_id:
        return await _delete_room(ctx, visit_id, visit.video_room_id)
    if visit.status not in ACTIVE_STATUSES:
        async with database.unit_of_work() as session:
            await repository.not_required(session, visit_id)
        return f"not needed: appointment {visit.status}"
    if visit.video_status == VideoStatus.READY:
        return "ready"
    try:
        room_id = await video.create_room(visit_id)
    except (TransientFailure, PermanentFailure, InvalidResponse) as error:
        return await _creation_failed(ctx, visit_id, error)
    async with database.unit_of_work() as session:
        status = await repository.record_room(session, visit_id, room_id)
    if status == AppointmentStatus.CANCELLED:
        # Cancelled while the room was being made: undo it now rather than at the next sweep.
        return await _delete_room(ctx, visit_id, room_id)
    return "ready"


async def _delete_room(ctx: dict[str, Any], visit_id: uuid.UUID, room_id: str) -> str:
    video: VideoSdk = ctx["videosdk"]
    try:
        existed = await video.delete_room(room_id)
    except TransientFailure as error:
        if not is_last_try(ctx, ctx["settings"]):
            raise retry_later(ctx, ctx["settings"], error) from error
        logger.error("video room not deleted; the retry cron will try again")
        return "deletion postponed"
    except (PermanentFailure, InvalidResponse) as error:
        logger.error("video room deletion refused", extra={"error": str(error)})
        return "deletion refused"
    async with ctx["database"].unit_of_work() as session:
        await repository.room_deleted(session, visit_id, room_id)
    return "deleted" if existed else "already gone"


async def _creation_failed(
    ctx: dict[str, Any], visit_id: uuid.UUID, error: IntegrationError
) -> str:
    settings: Settings = ctx["settings"]
    if isinstance(error, TransientFailure) and not is_last_try(ctx, settings):
        raise retry_later(ctx, settings, error) from error
    logger.error(
        "video room creation failed",
        extra={"error": str(error), "job_try": ctx.get("job_try", 1)},
    )
    database: Database = ctx["database"]
    # In-app only: the feed rows are the alert; staff devices are not paged for it.
    async with database.unit_of_work() as session:
        if await repository.mark_failed(session, visit_id):
            view = await appointments.view_for_job(session, visit_id)
            if view is not None:
                operators = await notifications.clinic_operators(
                    session, view.Appointment.clinic_id
                )
                await notifications.notify(
                    session,
                    operators,
                    notifications.video_failed_message(view),
                    f"video_failed:{visit_id}",
                )
    return "failed"


async def retry_video_rooms(ctx: dict[str, Any]) -> int:
    """Cron: rooms still pending after their event (lost job), failed ones (the service is
    back?), and rooms of cancelled visits that could not be deleted."""
    video: VideoSdk = ctx["videosdk"]
    if not video.enabled:
        return 0
    now = datetime.now(UTC)
    async with ctx["database"].reading(primary=True) as session:
        ids = await repository.to_reconcile(
            session,
            created_before=now - RECONCILE_GRACE,
            ends_after=now - RECONCILE_HORIZON,
            limit=RECONCILE_BATCH,
        )
    sweep = int(now.timestamp()) // (RECONCILE_EVERY_MINUTES * 60)
    for appointment_id in ids:
        await enqueue(
            ctx["redis"],
            SYNC_ROOM,
            str(appointment_id),
            job_id=f"video:{appointment_id}:sweep:{sweep}",
        )
    return len(ids)


async def recover_rooms(ctx: dict[str, Any]) -> int:
    """Recovery pass: rooms owed past the grace period whose job Redis does not know (lost
    with Redis) are planned again under the job id of the visit's current version, so a job
    still queued, deferred or running is never doubled. A room whose job was cut off by a
    killed worker needs nothing here: its job is still queued, and runs again once the dead
    worker's lease on it lapses (workers/leases.py)."""
    video: VideoSdk = ctx["videosdk"]
    if not video.enabled:
        return 0
    settings: Settings = ctx["settings"]
    now = datetime.now(UTC)
    cursor = rotation(ctx, "rooms")
    async with ctx["database"].reading(primary=True) as session:
        rows = await repository.owed_rooms(
            session,
            created_before=now - timedelta(seconds=settings.recovery_grace_seconds),
            ends_after=now - RECONCILE_HORIZON,
            after=cursor.after,
            limit=RECONCILE_BATCH,
        )
    cursor.advance(rows, RECONCILE_BATCH, lambda row: (row.created_at, row.id))
    owed = {room_job_id(row.id, row.version): row.id for row in rows}
    planned = 0
    for job_id in await unknown_jobs(ctx["redis"], list(owed)):
        planned += await enqueue(ctx["redis"], SYNC_ROOM, str(owed[job_id]), job_id=job_id)
    if planned:
        logger.warning("owed video rooms planned again", extra={"count": planned})
    return planned
