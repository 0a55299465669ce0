from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from app.appointments.events import PREFIX, Topic
from app.auth.dependencies import Principal
from app.kit.db import AnyRow
from app.kit.errors import NotFound
from app.kit.pagination import PageParams, build_page, parse_datetime, parse_uuid
from app.notifications import repository
from app.notifications.schemas import DeviceIn, DeviceOut, NotificationOut, Platform


@dataclass(frozen=True)
class Message:
    """What one user is told: a feed row, and a push with the same title and body."""

    kind: str
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)  # FCM data values are strings


def reminder_key(appointment_id: uuid.UUID | str, lead_minutes: int, starts_at: datetime) -> str:
    """One reminder per visit, lead and start time: a moved visit gets fresh reminders.
    `_DUE_REMINDERS` in the repository builds the same key in SQL."""
    return f"reminder:{appointment_id}:{lead_minutes}:{int(starts_at.timestamp())}"


async def register_device(
    session: AsyncSession, principal: Principal, data: DeviceIn
) -> tuple[DeviceOut, bool]:
    device, created = await repository.upsert_device(
        session, principal.user_id, data.token, data.platform.value
    )
    out = DeviceOut(
        id=device.id,
        platform=Platform(device.platform),
        created_at=device.created_at,
        last_seen_at=device.last_seen_at,
    )
    return out, created


def _out(notification: object) -> NotificationOut:
    return NotificationOut.model_validate(notification, from_attributes=True)


async def feed(
    session: AsyncSession, principal: Principal, params: PageParams, *, unread_only: bool
) -> tuple[list[NotificationOut], str | None]:
    after = params.position(parse_datetime, parse_uuid)
    rows = await repository.feed(
        session, principal.user_id, unread_only=unread_only, after=after, limit=params.limit
    )
    items, cursor = build_page(rows, params.limit, lambda n: (n.created_at, n.id))
    return [_out(n) for n in items], cursor


async def mark_read(
    session: AsyncSession, principal: Principal, notification_id: uuid.UUID
) -> NotificationOut:
    notification = await repository.mark_read(session, principal.user_id, notification_id)
    if notification is None:
        raise NotFound("No such notification.")
    return _out(notification)


async def notify(
    session: AsyncSession, recipients: Iterable[uuid.UUID], message: Message, dedupe_prefix: str
) -> list[uuid.UUID]:
    """Write the message to each recipient's feed, once per `dedupe_prefix` and recipient."""
    rows = [
        {
            "user_id": user_id,
            "kind": message.kind,
            "title": message.title,
            "body": message.body,
            "data": message.data,
            "dedupe_key": f"{dedupe_prefix}:{user_id}",
        }
        for user_id in dict.fromkeys(recipients)
    ]
    return await repository.insert_notifications(session, rows)


async def clinic_operators(session: AsyncSession, clinic_id: uuid.UUID) -> list[uuid.UUID]:
    return await repository.clinic_operators(session, clinic_id)


# --- What each appointment event says --------------------------------------------------------


def _when(starts_at: datetime, zone: str) -> str:
    return starts_at.astimezone(ZoneInfo(zone)).strftime("%a %d %b %Y at %H:%M")


def _data(view: AnyRow, kind: str) -> dict[str, str]:
    return {"kind": kind, "appointment_id": str(view.Appointment.id)}


def appointment_message(topic: str, view: AnyRow, starts_at: datetime) -> Message | None:
    """The patient's message for an appointment event, or None for events they are not told of."""
    with_whom = f"{view.provider_name} ({view.specialty})"
    when = _when(starts_at, view.tz)
    kind = topic.removeprefix(PREFIX)
    match topic:
        case Topic.BOOKED:
            title, body = "Appointment confirmed", f"Your visit with {with_whom} is on {when}."
        case Topic.CANCELLED:
            title, body = (
                "Appointment cancelled",
                f"Your visit with {with_whom} on {when} is cancelled.",
            )
        case Topic.RESCHEDULED:
            title, body = "Appointment moved", f"Your visit with {with_whom} is now on {when}."
        case _:
            return None
    return Message(kind, title, body, _data(view, kind))


def provider_message(topic: str, view: AnyRow, starts_at: datetime) -> Message | None:
    """The provider is told when the patient cancels or moves a visit themselves."""
    when = _when(starts_at, view.tz)
    kind = topic.removeprefix(PREFIX)
    match topic:
        case Topic.CANCELLED:
            title, body = "Visit cancelled", f"{view.patient_name} cancelled the visit on {when}."
        case Topic.RESCHEDULED:
            title, body = "Visit moved", f"{view.patient_name} moved their visit to {when}."
        case _:
            return None
    return Message(kind, title, body, _data(view, kind))


def reminder_message(view: AnyRow, lead_minutes: int) -> Message:
    hours, minutes = divmod(lead_minutes, 60)
    lead = (
        f"{hours} hour{'s' if hours != 1 else ''}"
        if hours and not minutes
        else f"{lead_minutes} minutes"
    )
    when = _when(view.Appointment.starts_at, view.tz)
    return Message(
        "reminder",
        "Upcoming visit",
        f"In {lead}: your visit with {view.provider_name} ({view.specialty}) on {when}.",
        {**_data(view, "reminder"), "lead_minutes": str(lead_minutes)},
    )


def video_failed_message(view: AnyRow) -> Message:
    when = _when(view.Appointment.starts_at, view.tz)
    return Message(
        "video_failed",
        "Video room could not be created",
        f"The video room for {view.patient_name}'s visit with {view.provider_name} on {when} "
        "could not be created; it is retried automatically.",
        _data(view, "video_failed"),
    )
