from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Text,
    bindparam,
    cast,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.kit import outbox, sql
from app.kit.db import AnyRow, AnySelect
from app.models import Appointment, AppointmentStatus, Provider, Role, Specialty, User

_provider_user = aliased(User, name="provider_user")
_patient_user = aliased(User, name="patient_user")


@dataclass(frozen=True)
class Visibility:
    """Which appointments a caller may see: their own, their clinic's, or all (admin)."""

    role: Role
    user_id: uuid.UUID

    def clause(self) -> Any:
        if self.role is Role.PATIENT:
            return Appointment.patient_id == self.user_id
        if self.role is Role.PROVIDER:
            return Appointment.provider_id == self.user_id
        if self.role is Role.STAFF:
            # A scalar subquery instead of a second round trip for the staff member's clinic.
            clinic = select(User.clinic_id).where(User.id == self.user_id).scalar_subquery()
            return Appointment.clinic_id == clinic
        return True


def _view() -> AnySelect:
    """Appointments with their provider and patient summaries, in one query (audit F1)."""
    return (
        select(
            Appointment,
            _provider_user.full_name.label("provider_name"),
            Specialty.name.label("specialty"),
            Provider.timezone.label("tz"),
            _patient_user.full_name.label("patient_name"),
        )
        .join(Provider, Provider.user_id == Appointment.provider_id)
        .join(_provider_user, _provider_user.id == Appointment.provider_id)
        .join(Specialty, Specialty.id == Provider.specialty_id)
        .join(_patient_user, _patient_user.id == Appointment.patient_id)
    )


async def get_view(
    session: AsyncSession, appointment_id: uuid.UUID, visibility: Visibility
) -> AnyRow | None:
    query = _view().where(Appointment.id == appointment_id, visibility.clause())
    return (await session.execute(query)).one_or_none()


async def get_view_for_job(session: AsyncSession, appointment_id: uuid.UUID) -> AnyRow | None:
    """The appointment with its summaries, whoever may see it: jobs act for the system."""
    return (await session.execute(_view().where(Appointment.id == appointment_id))).one_or_none()


# The listing reads table columns (Core), not ORM entities: no instances, no identity map.
_a = Appointment.__table__.c
_listed_provider = User.__table__.alias("provider_user")
_listed_patient = User.__table__.alias("patient_user")
_providers = Provider.__table__
_specialties = Specialty.__table__
# The order the service reads them in (by position): the appointment's own columns, then the
# provider's name, specialty and time zone, then the patient's name. Ids come as text, which
# PostgreSQL renders exactly as the API does and the JSON encoder takes as it is.
LISTED_COLUMNS = (
    cast(_a.id, Text).label("id"),
    cast(_a.provider_id, Text).label("provider_id"),
    cast(_a.patient_id, Text).label("patient_id"),
    cast(_a.clinic_id, Text).label("clinic_id"),
    _a.starts_at,
    _a.ends_at,
    _a.status,
    _a.video_status,
    _a.cancel_reason,
    _a.created_at,
    _a.updated_at,
    _listed_provider.c.full_name,
    _specialties.c.name,
    _providers.c.timezone,
    _listed_patient.c.full_name,
)


def _listed_where_visible(role: Role) -> AnySelect:
    """LISTED_COLUMNS of the appointments a caller of `role` (`user_id`) may see."""
    query = (
        select(*LISTED_COLUMNS)
        .join(_providers, _providers.c.user_id == _a.provider_id)
        .join(_listed_provider, _listed_provider.c.id == _a.provider_id)
        .join(_specialties, _specialties.c.id == _providers.c.specialty_id)
        .join(_listed_patient, _listed_patient.c.id == _a.patient_id)
    )
    user_id = bindparam("user_id", type_=PG_UUID(as_uuid=True))
    # The same conditions as Visibility.clause, over the table's columns.
    if role is Role.PATIENT:
        query = query.where(_a.patient_id == user_id)
    elif role is Role.PROVIDER:
        query = query.where(_a.provider_id == user_id)
    elif role is Role.STAFF:
        users = User.__table__.c
        clinic = select(users.clinic_id).where(users.id == user_id).scalar_subquery()
        query = query.where(_a.clinic_id == clinic)
    return query


@functools.cache
def _listed_by_id(role: Role) -> sql.Statement:
    return sql.Statement(
        _listed_where_visible(role).where(
            _a.id == bindparam("appointment_id", type_=PG_UUID(as_uuid=True))
        )
    )


async def get_listed(
    executor: sql.Executor, appointment_id: uuid.UUID, visibility: Visibility
) -> AnyRow | None:
    """The appointment as a row of LISTED_COLUMNS, if the caller may see it."""
    return await sql.fetchrow(
        executor,
        _listed_by_id(visibility.role),
        {"appointment_id": appointment_id, "user_id": visibility.user_id},
    )


@functools.cache
def _listing(
    role: Role,
    *,
    statuses: bool,
    starts_from: bool,
    starts_before: bool,
    after: bool,
    descending: bool,
) -> sql.Statement:
    """The listing statement of one shape, built once: every value is a bound parameter, so
    requests reuse the statement and its compiled form instead of rebuilding both."""
    query = _listed_where_visible(role)
    if statuses:
        # An array parameter, not an expanding IN: one SQL text whatever the number of statuses,
        # so the statement is compiled once (kit.sql) and prepared once per connection.
        # (A typed ARRAY parameter would need SQLAlchemy's bind processing: a CAST in SQL.)
        query = query.where(text("appointments.status = ANY(CAST(:statuses AS text[]))"))
    if starts_from:
        query = query.where(_a.starts_at >= bindparam("starts_from", type_=_a.starts_at.type))
    if starts_before:
        query = query.where(_a.starts_at < bindparam("starts_before", type_=_a.starts_at.type))
    if after:
        key = tuple_(_a.starts_at, _a.id)
        last = tuple_(
            bindparam("after_at", type_=_a.starts_at.type),
            bindparam("after_id", type_=PG_UUID(as_uuid=True)),
        )
        query = query.where(key < last if descending else key > last)
    if descending:
        query = query.order_by(_a.starts_at.desc(), _a.id.desc())
    else:
        query = query.order_by(_a.starts_at, _a.id)
    return sql.Statement(query.limit(bindparam("limit", type_=Integer)))


async def list_views(
    executor: sql.Executor,
    visibility: Visibility,
    *,
    statuses: Sequence[str],
    starts_from: datetime | None,
    starts_before: datetime | None,
    descending: bool,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[AnyRow]:
    """Up to `limit + 1` rows of LISTED_COLUMNS the caller may see, in keyset order."""
    query = _listing(
        visibility.role,
        statuses=bool(statuses),
        starts_from=starts_from is not None,
        starts_before=starts_before is not None,
        after=after is not None,
        descending=descending,
    )
    params: dict[str, Any] = {"user_id": visibility.user_id, "limit": limit + 1}
    if statuses:
        params["statuses"] = list(statuses)
    if starts_from is not None:
        params["starts_from"] = starts_from
    if starts_before is not None:
        params["starts_before"] = starts_before
    if after is not None:
        params["after_at"], params["after_id"] = after
    return await sql.fetch(executor, query, params)


async def lock_provider(
    session: AsyncSession, provider_id: uuid.UUID, *, active_only: bool = True
) -> Provider | None:
    """Serialise bookings of one provider. NO KEY UPDATE is the FOR UPDATE variant that still
    lets other transactions take FK (KEY SHARE) locks on the row, e.g. to add time off."""
    conditions: list[ColumnElement[bool]] = [Provider.user_id == provider_id]
    if active_only:
        conditions.append(Provider.is_active.is_(True))
    result = await session.execute(
        select(Provider)
        .where(*conditions)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


# Whether an active appointment of the provider starts at :start, unless time off overlaps it
# (the slot would then be refused as not bookable, which the checks under the lock say). Served
# by ix_appointments_provider_id_active and ix_time_off_provider_id_ends_at: a read of an
# index entry or two, where the full slot check expands the provider's grid for the day.
_TAKEN_AT = sql.Statement(
    text(
        """
    SELECT EXISTS (
        SELECT 1 FROM appointments a
        WHERE a.provider_id = :provider_id
          AND a.status IN ('booked', 'checked_in')
          AND a.starts_at = :start
          AND NOT EXISTS (
              SELECT 1 FROM time_off t
              WHERE t.provider_id = a.provider_id
                AND t.ends_at > a.starts_at
                AND t.starts_at < a.ends_at
          )
    )
    """
    )
)
# The booking's provider lock, with everything the booking and its response need of the
# provider and the patient in the same round trip. Only the provider's row is locked (`OF p`);
# the patient is NULL when `patient_id` names no active patient.
_LOCK_FOR_BOOKING = sql.Statement(
    text(
        """
    SELECT p.key AS provider_key, p.clinic_id, p.timezone AS tz,
           pu.full_name AS provider_name, sp.name AS specialty,
           pt.key AS patient_key, pt.full_name AS patient_name
    FROM providers p
    JOIN users pu ON pu.id = p.user_id
    JOIN specialties sp ON sp.id = p.specialty_id
    LEFT JOIN users pt ON pt.id = :patient_id AND pt.role = 'patient' AND pt.is_active
    WHERE p.user_id = :provider_id AND p.is_active
    FOR NO KEY UPDATE OF p
    """
    )
)
# The appointment and its outbox events in one round trip (`outbox.INSERT_EVENTS`).
_INSERT_BOOKING = sql.Statement(
    text(
        f"""
    WITH booked AS (
        INSERT INTO appointments
            (id, provider_id, provider_key, patient_id, patient_key, clinic_id, starts_at,
             ends_at)
        VALUES (:id, :provider_id, :provider_key, :patient_id, :patient_key, :clinic_id,
                :starts_at, :ends_at)
        RETURNING id, provider_id, patient_id, clinic_id, starts_at, ends_at, status,
                  video_status, cancel_reason, created_at, updated_at
    ), events AS (
        {outbox.INSERT_EVENTS}
    )
    SELECT * FROM booked
    """
    )
)


async def taken_at(session: AsyncSession, provider_id: uuid.UUID, start: datetime) -> bool:
    """Whether an active appointment of the provider starts at `start` (time off aside): read
    before the session's BEGIN when nothing has been written yet."""
    params = {"provider_id": provider_id, "start": start}
    return bool(await sql.fetchval(session, _TAKEN_AT, params, before_begin=True))


async def lock_for_booking(
    session: AsyncSession, provider_id: uuid.UUID, patient_id: uuid.UUID
) -> Any | None:
    """Lock an active provider's row against concurrent bookings of theirs (as
    `lock_provider`), and read the patient; None when there is no such active provider."""
    params = {"provider_id": provider_id, "patient_id": patient_id}
    return await sql.fetchrow(session, _LOCK_FOR_BOOKING, params)


async def insert_booking(
    session: AsyncSession,
    *,
    appointment_id: uuid.UUID,
    provider_id: uuid.UUID,
    provider_key: int,
    patient_id: uuid.UUID,
    patient_key: int,
    clinic_id: uuid.UUID,
    starts_at: datetime,
    ends_at: datetime,
    events: Sequence[tuple[str, dict[str, Any]]],
) -> Any:
    """The new appointment's row as stored (defaults and timestamps filled in), written with
    its outbox `events` (announced to this process's subscribers on commit)."""
    params = {
        **outbox.event_params(events),
        "id": appointment_id,
        "provider_id": provider_id,
        "provider_key": provider_key,
        "patient_id": patient_id,
        "patient_key": patient_key,
        "clinic_id": clinic_id,
        "starts_at": starts_at,
        "ends_at": ends_at,
    }
    row = await sql.fetchrow(session, _INSERT_BOOKING, params)
    assert row is not None  # INSERT ... RETURNING returns the row it inserted or raises
    outbox.announce(session, events)
    return row


def _transition_statement(*, cancel: bool) -> sql.Statement:
    # What _transition_values sets, as one statement built at import, with the change's outbox
    # events (`outbox.INSERT_EVENTS`), written only when the appointment did change.
    reason = ", cancel_reason = :cancel_reason" if cancel else ""
    return sql.Statement(
        text(
            "WITH changed AS ("
            "UPDATE appointments SET status = :to, version = version + 1, updated_at = now()"
            f"{reason} WHERE id = :appointment_id AND status = ANY(CAST(:allowed AS text[])) "
            "RETURNING status, cancel_reason, version, updated_at"
            f"), events AS ({outbox.INSERT_EVENTS} WHERE EXISTS (SELECT FROM changed)) "
            "SELECT * FROM changed"
        )
    )


_TRANSITION = _transition_statement(cancel=False)
_CANCELLATION = _transition_statement(cancel=True)


async def transition(
    session: AsyncSession,
    appointment_id: uuid.UUID,
    *,
    allowed_from: Sequence[AppointmentStatus],
    to: AppointmentStatus,
    cancel_reason: str | None = None,
    events: Sequence[tuple[str, dict[str, Any]]],
) -> AnyRow | None:
    """Atomically move an appointment to `to` if it is in one of `allowed_from`, writing its
    outbox `events` when it moved (None, and no events, when it did not)."""
    params: dict[str, Any] = {
        **outbox.event_params(events),
        "appointment_id": appointment_id,
        "to": to.value,
        "allowed": [s.value for s in allowed_from],
    }
    if to is AppointmentStatus.CANCELLED:
        params["cancel_reason"] = cancel_reason
    changed = await sql.fetchrow(
        session, _CANCELLATION if to is AppointmentStatus.CANCELLED else _TRANSITION, params
    )
    if changed is not None:
        outbox.announce(session, events)
    return changed


async def move(
    session: AsyncSession,
    appointment_id: uuid.UUID,
    *,
    starts_at: datetime,
    ends_at: datetime,
) -> AnyRow | None:
    result = await session.execute(
        update(Appointment)
        .where(
            Appointment.id == appointment_id,
            Appointment.status == AppointmentStatus.BOOKED.value,
        )
        .values(
            starts_at=starts_at,
            ends_at=ends_at,
            version=Appointment.version + 1,
            updated_at=func.now(),
        )
        .returning(Appointment.version, Appointment.updated_at)
        .execution_options(synchronize_session=False)
    )
    return result.one_or_none()


# What a bulk change returns of each appointment it changed: what its outbox event needs.
_CHANGED_COLUMNS = (
    Appointment.id,
    Appointment.provider_id,
    Appointment.patient_id,
    Appointment.clinic_id,
    Appointment.starts_at,
    Appointment.ends_at,
)


def _transition_values(to: AppointmentStatus, cancel_reason: str | None) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": to.value,
        "version": Appointment.version + 1,
        "updated_at": func.now(),
    }
    if to is AppointmentStatus.CANCELLED:
        values["cancel_reason"] = cancel_reason
    return values


async def bulk_transition(
    session: AsyncSession,
    visibility: Visibility,
    ids: Sequence[uuid.UUID],
    *,
    allowed_from: Sequence[AppointmentStatus],
    to: AppointmentStatus,
    cancel_reason: str | None,
) -> Sequence[AnyRow]:
    """One statement for the whole batch (audit F16): for each requested id, whether the caller
    can see it (`seen`) and, when it moved, the changed row's ids (`changed`). The UPDATE
    re-checks the status under its row lock, so a concurrent change is never overwritten."""
    requested = select(
        func.unnest(bindparam("ids", list(ids), type_=ARRAY(PG_UUID(as_uuid=True)))).label("id")
    ).cte("requested")
    visible = (
        select(Appointment.id)
        .where(Appointment.id.in_(select(requested.c.id)), visibility.clause())
        .cte("visible")
    )
    changed = (
        update(Appointment)
        .where(
            Appointment.id.in_(select(visible.c.id)),
            Appointment.status.in_([s.value for s in allowed_from]),
        )
        .values(**_transition_values(to, cancel_reason))
        .returning(*_CHANGED_COLUMNS)
        .cte("changed")
    )
    query = select(
        requested.c.id,
        visible.c.id.is_not(None).label("seen"),
        changed.c.id.is_not(None).label("changed"),
        changed.c.provider_id,
        changed.c.patient_id,
        changed.c.clinic_id,
        changed.c.starts_at,
        changed.c.ends_at,
    ).select_from(
        requested.outerjoin(visible, visible.c.id == requested.c.id).outerjoin(
            changed, changed.c.id == requested.c.id
        )
    )
    return (await session.execute(query)).all()


async def cancel_range(
    session: AsyncSession,
    provider_id: uuid.UUID,
    *,
    starts_from: datetime,
    starts_before: datetime,
    reason: str,
) -> Sequence[AnyRow]:
    """Cancel every booked visit of the provider starting in [from, to), in one statement
    (served by ix_appointments_provider_id_active)."""
    statement = (
        update(Appointment)
        .where(
            Appointment.provider_id == provider_id,
            Appointment.status == AppointmentStatus.BOOKED.value,
            Appointment.starts_at >= starts_from,
            Appointment.starts_at < starts_before,
        )
        .values(**_transition_values(AppointmentStatus.CANCELLED, reason))
        .returning(*_CHANGED_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    return (await session.execute(statement)).all()
