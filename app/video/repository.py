from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import case, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit.db import AnyRow
from app.models import ACTIVE_STATUSES, Appointment, VideoStatus
from app.models.appointments import VIDEO_TO_RECONCILE_SQL

_ACTIVE = [status.value for status in ACTIVE_STATUSES]


async def room_state(session: AsyncSession, appointment_id: uuid.UUID) -> AnyRow | None:
    query = select(
        Appointment.status, Appointment.video_status, Appointment.video_room_id, Appointment.version
    ).where(Appointment.id == appointment_id)
    return (await session.execute(query)).one_or_none()


async def record_room(session: AsyncSession, appointment_id: uuid.UUID, room_id: str) -> str | None:
    """Store the room; `ready` only while the visit is active. The room id is kept even for a
    visit cancelled meanwhile, so its deletion is on record. Returns the visit's status."""
    statement = (
        update(Appointment)
        .where(Appointment.id == appointment_id)
        .values(
            video_room_id=room_id,
            video_status=case(
                (Appointment.status.in_(_ACTIVE), VideoStatus.READY.value),
                else_=Appointment.video_status,
            ),
        )
        .returning(Appointment.status)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def room_deleted(session: AsyncSession, appointment_id: uuid.UUID, room_id: str) -> None:
    await session.execute(
        update(Appointment)
        .where(Appointment.id == appointment_id, Appointment.video_room_id == room_id)
        .values(video_room_id=None, video_status=VideoStatus.NOT_REQUIRED.value)
    )


async def not_required(session: AsyncSession, appointment_id: uuid.UUID) -> None:
    """A visit that ended without a room never needs one."""
    await session.execute(
        update(Appointment)
        .where(
            Appointment.id == appointment_id,
            Appointment.status.not_in(_ACTIVE),
            Appointment.video_room_id.is_(None),
            Appointment.video_status.in_([VideoStatus.PENDING.value, VideoStatus.FAILED.value]),
        )
        .values(video_status=VideoStatus.NOT_REQUIRED.value)
    )


async def mark_failed(session: AsyncSession, appointment_id: uuid.UUID) -> bool:
    """True when this call moved an active visit from `pending` to `failed`."""
    statement = (
        update(Appointment)
        .where(
            Appointment.id == appointment_id,
            Appointment.status.in_(_ACTIVE),
            Appointment.video_status == VideoStatus.PENDING.value,
        )
        .values(video_status=VideoStatus.FAILED.value)
        .returning(Appointment.id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def to_reconcile(
    session: AsyncSession, *, created_before: datetime, ends_after: datetime, limit: int
) -> Sequence[uuid.UUID]:
    """Rooms to create (visits still ahead) and rooms of cancelled visits to delete; the
    partial index ix_appointments_video_to_reconcile holds exactly these rows."""
    query = (
        select(Appointment.id)
        .where(
            text(f"({VIDEO_TO_RECONCILE_SQL})"),
            Appointment.created_at < created_before,
            # Bounded in time: a visit long over needs no room, nor a retried deletion.
            Appointment.ends_at > ends_after,
        )
        .order_by(Appointment.created_at)
        .limit(limit)
    )
    return (await session.scalars(query)).all()


async def owed_rooms(
    session: AsyncSession,
    *,
    created_before: datetime,
    ends_after: datetime,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[AnyRow]:
    """Rooms still owed (to create, or of a cancelled visit to delete), failed ones aside (the
    retry cron's business), keyset after `after` on (created_at, id); read through the partial
    index ix_appointments_video_to_reconcile."""
    query = select(Appointment.id, Appointment.created_at, Appointment.version).where(
        text(f"({VIDEO_TO_RECONCILE_SQL})"),
        Appointment.video_status != VideoStatus.FAILED.value,
        Appointment.created_at < created_before,
        Appointment.ends_at > ends_after,
    )
    if after is not None:
        query = query.where(tuple_(Appointment.created_at, Appointment.id) > after)
    query = query.order_by(Appointment.created_at, Appointment.id).limit(limit)
    return (await session.execute(query)).all()
