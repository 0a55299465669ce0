"""What an appointment's change tells the rest of Carebook through the outbox: the topics, the
payload they carry, and the groups of topics that each consumer follows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from app.kit.cache import Staleness
from app.kit.db import AnyRow
from app.models import Appointment, AppointmentStatus

# Every topic starts with it: the event bus and the cache subscribe by prefix.
PREFIX: Final = "appointment."


class Topic(StrEnum):
    BOOKED = "appointment.booked"
    RESCHEDULED = "appointment.rescheduled"
    CHECKED_IN = "appointment.checked_in"
    COMPLETED = "appointment.completed"
    CANCELLED = "appointment.cancelled"
    NO_SHOW = "appointment.no_show"


# The topic of each status an appointment can be moved to.
STATUS_TOPICS: Final = {
    AppointmentStatus.CHECKED_IN: Topic.CHECKED_IN,
    AppointmentStatus.COMPLETED: Topic.COMPLETED,
    AppointmentStatus.CANCELLED: Topic.CANCELLED,
    AppointmentStatus.NO_SHOW: Topic.NO_SHOW,
}
# Those that create, move or remove a visit: the patient is told, the video room follows.
VISIT_CHANGES: Final = (Topic.BOOKED, Topic.CANCELLED, Topic.RESCHEDULED)
# Every topic that can change a figure of analytics; a check-in changes none (a checked-in
# visit counts in `booked` only, as a booked one does).
COUNTED: Final = (
    Topic.BOOKED,
    Topic.CANCELLED,
    Topic.COMPLETED,
    Topic.NO_SHOW,
    Topic.RESCHEDULED,
)
# A visit changes its provider's availability on its own dates only (and, moved, on those it
# left), never the provider's profile.
STALENESS: Final = Staleness(PREFIX, dated=True, moves=(Topic.RESCHEDULED,))


def utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def payload(
    appointment_id: uuid.UUID,
    provider_id: uuid.UUID,
    patient_id: uuid.UUID,
    clinic_id: uuid.UUID,
    starts_at: datetime,
    ends_at: datetime,
    /,
    **extra: Any,
) -> dict[str, Any]:
    """An appointment event's payload. Its times let subscribers act on the dates it touches,
    and its provider's `timezone` (in `extra`, where the caller has it in hand) the local dates
    those are: without it the cache bumps a day either side of each."""
    return {
        "appointment_id": str(appointment_id),
        "provider_id": str(provider_id),
        "patient_id": str(patient_id),
        "clinic_id": str(clinic_id),
        "starts_at": utc_iso(starts_at),
        "ends_at": utc_iso(ends_at),
        **extra,
    }


def payload_of(appointment: Appointment | AnyRow, **extra: Any) -> dict[str, Any]:
    """`payload` of an appointment's row; `extra` overrides its times where the event moved it."""
    return payload(
        appointment.id,
        appointment.provider_id,
        appointment.patient_id,
        appointment.clinic_id,
        appointment.starts_at,
        appointment.ends_at,
        **extra,
    )
