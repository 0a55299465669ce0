from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit.db import AnyRow
from app.models import Device, Notification, Role, User, new_id


async def upsert_device(
    session: AsyncSession, user_id: uuid.UUID, token: str, platform: str
) -> tuple[Device, bool]:
    """Register a token; a token seen before moves to this user (the phone changed hands or
    accounts). Returns the device and whether it was new."""
    values = insert(Device).values(id=new_id(), user_id=user_id, token=token, platform=platform)
    statement = values.on_conflict_do_update(
        index_elements=[Device.token],
        set_={"user_id": user_id, "platform": platform, "last_seen_at": func.now()},
    ).returning(Device, text("xmax = 0 AS inserted"))
    row = (await session.execute(statement)).one()
    return row[0], bool(row[1])


async def device_tokens(session: AsyncSession, user_id: uuid.UUID) -> list[str]:
    query = select(Device.token).where(Device.user_id == user_id).order_by(Device.created_at)
    return list((await session.scalars(query)).all())


async def delete_device(session: AsyncSession, token: str) -> None:
    await session.execute(delete(Device).where(Device.token == token))


async def insert_notifications(
    session: AsyncSession, rows: Sequence[dict[str, Any]]
) -> list[uuid.UUID]:
    """Insert feed rows; a row whose `dedupe_key` exists is kept as it is. The ids of all the
    rows, new or existing, in one statement (the no-op update makes RETURNING see old rows)."""
    if not rows:
        return []
    values = insert(Notification).values([{"id": new_id(), **row} for row in rows])
    statement = values.on_conflict_do_update(
        index_elements=[Notification.dedupe_key],
        set_={"dedupe_key": values.excluded.dedupe_key},
    ).returning(Notification.id)
    return list((await session.scalars(statement)).all())


async def pending_push(session: AsyncSession, notification_id: uuid.UUID) -> AnyRow | None:
    """What a delivery needs, as a plain row (it outlives the session)."""
    query = select(
        Notification.id,
        Notification.user_id,
        Notification.title,
        Notification.body,
        Notification.data,
        Notification.dedupe_key,
        Notification.pushed_at,
    ).where(Notification.id == notification_id)
    return (await session.execute(query)).one_or_none()


async def mark_pushed(session: AsyncSession, notification_id: uuid.UUID) -> None:
    await session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.pushed_at.is_(None))
        .values(pushed_at=func.now())
    )


async def unpushed(
    session: AsyncSession,
    *,
    created_after: datetime,
    created_before: datetime,
    after: tuple[datetime, uuid.UUID] | None,
    skip_kinds: Sequence[str],
    limit: int,
) -> Sequence[AnyRow]:
    """Notifications not pushed yet, created inside the window, keyset after `after` on
    (created_at, id): served by ix_notifications_unpushed."""
    query = select(Notification.id, Notification.created_at).where(
        Notification.pushed_at.is_(None),
        Notification.created_at > created_after,
        Notification.created_at < created_before,
        Notification.kind.not_in(skip_kinds),
    )
    if after is not None:
        query = query.where(tuple_(Notification.created_at, Notification.id) > after)
    query = query.order_by(Notification.created_at, Notification.id).limit(limit)
    return (await session.execute(query)).all()


async def feed(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    unread_only: bool,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[Notification]:
    """Newest first, keyset on (created_at, id): served by ix_notifications_user_id_created_at."""
    query = select(Notification).where(Notification.user_id == user_id)
    if unread_only:
        query = query.where(Notification.read_at.is_(None))
    if after is not None:
        query = query.where(tuple_(Notification.created_at, Notification.id) < after)
    query = query.order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit + 1)
    return (await session.scalars(query)).all()


async def mark_read(
    session: AsyncSession, user_id: uuid.UUID, notification_id: uuid.UUID
) -> Notification | None:
    """Idempotent: a notification read before keeps its first `read_at`."""
    statement = (
        update(Notification)
        .where(Notification.id == notification_id, Notification.user_id == user_id)
        .values(read_at=func.coalesce(Notification.read_at, func.now()))
        .returning(Notification)
    )
    return (await session.scalars(statement)).one_or_none()


async def clinic_operators(session: AsyncSession, clinic_id: uuid.UUID) -> list[uuid.UUID]:
    """Active staff of the clinic; the admins when the clinic has none, so an alert always
    reaches someone."""
    staff = (User.role == Role.STAFF.value) & (User.clinic_id == clinic_id)
    query = select(User.id).where(
        User.is_active,
        staff
        | (
            (User.role == Role.ADMIN.value) & ~select(User.id).where(staff, User.is_active).exists()
        ),
    )
    return list((await session.scalars(query)).all())


# Booked visits inside a reminder's window whose reminder was never written: lost with Redis, or
# due while no worker ran. The window ends at the next shorter reminder (or the start), and a
# visit booked after its reminder was due never gets that one.
_DUE_REMINDERS = text(
    """
    WITH params AS (
      SELECT CAST(:now AS timestamptz) AS now, CAST(:lead AS integer) AS lead,
             CAST(:next_lead AS integer) AS next_lead
    )
    SELECT a.id, a.starts_at FROM appointments a, params p
    WHERE a.status = 'booked'
      AND a.starts_at > p.now + make_interval(mins => p.next_lead)
      AND a.starts_at <= p.now + make_interval(mins => p.lead)
      AND a.created_at < a.starts_at - make_interval(mins => p.lead)
      AND NOT EXISTS (
        SELECT 1 FROM notifications n
        WHERE n.dedupe_key = concat_ws(':', 'reminder', a.id, p.lead,
                                       floor(extract(epoch FROM a.starts_at))::bigint, a.patient_id)
      )
    ORDER BY a.starts_at
    LIMIT :limit
    """
)


async def missed_reminders(
    session: AsyncSession, *, lead: int, next_lead: int, now: datetime, limit: int
) -> Sequence[AnyRow]:
    params = {"lead": lead, "next_lead": next_lead, "now": now, "limit": limit}
    return (await session.execute(_DUE_REMINDERS, params)).all()
