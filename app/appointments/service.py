from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.appointments import events, repository
from app.appointments.errors import InvalidTransition, NotASlot, SlotUnavailable
from app.appointments.events import Topic
from app.appointments.repository import Visibility
from app.appointments.schemas import (
    AppointmentOut,
    BookIn,
    BulkAction,
    BulkIn,
    BulkOut,
    BulkResult,
    Order,
    PatientRef,
    ProviderRef,
    RangeCancelIn,
    RangeCancelOut,
)
from app.auth.access import require_own_clinic
from app.auth.dependencies import Principal
from app.availability import service as availability_service
from app.availability.rules import BookingRules
from app.availability.service import SlotRefusal
from app.kit import audit, outbox, sql
from app.kit.db import AnyRow, violated_constraint
from app.kit.errors import Forbidden, NotFound, RangeTooLarge, ValidationFailed
from app.kit.pagination import PageParams, build_page, parse_datetime, parse_uuid
from app.kit.schemas import to_local_iso
from app.models import Appointment, AppointmentStatus, Provider, Role
from app.models.base import new_id

# The status machine of the contract; anything else is `invalid_transition`.
ALLOWED_FROM: dict[AppointmentStatus, tuple[AppointmentStatus, ...]] = {
    AppointmentStatus.CHECKED_IN: (AppointmentStatus.BOOKED,),
    AppointmentStatus.COMPLETED: (AppointmentStatus.BOOKED, AppointmentStatus.CHECKED_IN),
    AppointmentStatus.CANCELLED: (AppointmentStatus.BOOKED,),
    AppointmentStatus.NO_SHOW: (AppointmentStatus.BOOKED, AppointmentStatus.CHECKED_IN),
}
# Who may act on an appointment they can see; patients only cancel and reschedule their own.
STAFF_SIDE = frozenset({Role.PROVIDER, Role.STAFF, Role.ADMIN})
# Whose actions on appointments go to the audit log (DESIGN §3: every staff action).
OPERATORS = frozenset({Role.STAFF, Role.ADMIN})
BULK_ACTIONS = {
    BulkAction.CANCEL: AppointmentStatus.CANCELLED,
    BulkAction.CHECK_IN: AppointmentStatus.CHECKED_IN,
    BulkAction.COMPLETE: AppointmentStatus.COMPLETED,
    BulkAction.NO_SHOW: AppointmentStatus.NO_SHOW,
}
RANGE_CANCEL_MAX = timedelta(days=366)
EVERYONE = frozenset(Role)


def _out(row: AnyRow, **changes: Any) -> AppointmentOut:
    """The API shape of a view row; `changes` are values an UPDATE ... RETURNING just set."""
    appointment: Appointment = row.Appointment
    current = {
        name: changes[name] if name in changes else getattr(appointment, name)
        for name in ("status", "cancel_reason", "updated_at", "starts_at", "ends_at")
    }
    return AppointmentOut(
        id=appointment.id,
        provider_id=appointment.provider_id,
        patient_id=appointment.patient_id,
        clinic_id=appointment.clinic_id,
        start=to_local_iso(current["starts_at"], row.tz),
        end=to_local_iso(current["ends_at"], row.tz),
        status=current["status"],
        video_status=appointment.video_status,
        cancel_reason=current["cancel_reason"],
        created_at=appointment.created_at,
        updated_at=current["updated_at"],
        provider=ProviderRef(
            id=appointment.provider_id, full_name=row.provider_name, specialty=row.specialty
        ),
        patient=PatientRef(id=appointment.patient_id, full_name=row.patient_name),
    )


def _visibility(principal: Principal) -> Visibility:
    return Visibility(role=principal.role, user_id=principal.user_id)


async def _visible(
    session: AsyncSession, principal: Principal, appointment_id: uuid.UUID
) -> AnyRow:
    row = await repository.get_view(session, appointment_id, _visibility(principal))
    if row is None:
        # Also for appointments that exist but are not the caller's: never reveal existence.
        raise NotFound("No such appointment.")
    return row


def _bookable(slot: tuple[datetime, datetime] | SlotRefusal) -> tuple[datetime, datetime]:
    """The slot availability found, or the error of its refusal."""
    if slot is SlotRefusal.TAKEN:
        raise SlotUnavailable(slot.value)
    if isinstance(slot, SlotRefusal):
        raise NotASlot(slot.value)
    return slot


def _overlap_error(exc: IntegrityError) -> SlotUnavailable:
    if violated_constraint(exc) == "ex_appointments_patient_overlap":
        return SlotUnavailable("The patient already has an appointment at this time.")
    if violated_constraint(exc) == "ex_appointments_provider_overlap":
        return SlotUnavailable("This slot has just been taken; pick another one.")
    raise exc


async def _lock_provider(
    session: AsyncSession,
    principal: Principal,
    provider_id: uuid.UUID,
    action: str,
    *,
    active_only: bool = True,
) -> Provider:
    """The provider's row, locked against concurrent bookings of theirs; staff act only on
    providers of their own clinic."""
    provider = await repository.lock_provider(session, provider_id, active_only=active_only)
    if provider is None:
        raise NotFound("No such provider.")
    require_own_clinic(principal, provider.clinic_id, action)
    return provider


async def _patient_for(session: AsyncSession, principal: Principal, data: BookIn) -> uuid.UUID:
    if principal.role is Role.PATIENT:
        if data.patient_id not in (None, principal.user_id):
            raise Forbidden("Patients book for themselves only.")
        return principal.user_id
    if principal.role not in (Role.STAFF, Role.ADMIN):
        raise Forbidden("Only patients, staff and admins book appointments.")
    if data.patient_id is None:
        raise ValidationFailed("patient_id is required", loc=("body", "patient_id"))
    return data.patient_id


async def _refuse_if_taken(
    session: AsyncSession, rules: BookingRules, provider_id: uuid.UUID, start: datetime
) -> None:
    """Contention losers fail here, on one indexed read before the provider lock and before
    any write, so they never queue for the lock. Only a bookable time that an active
    appointment already starts at is refused; everything else (and every apparent winner)
    goes on to the checks under the lock, which decide. (A start the provider's grid no
    longer has, under a visit booked before the schedule changed, is refused here as taken
    where the checks would say `not_a_slot`.)

    It runs on the write session, so an apparent winner goes on with the connection it has:
    a read on another session would hand its connection back and queue for a new one behind
    every request of the burst, none of which could see the winner's commit before it. It runs
    before the session's BEGIN, so a loser's request sends no BEGIN and no ROLLBACK: this
    read and the idempotency lookup of its refusal are all it costs the database."""
    now = rules.now()
    bookable = now + rules.min_notice <= start < now + rules.horizon
    if bookable and await repository.taken_at(session, provider_id, start):
        raise SlotUnavailable("This slot has just been taken; pick another one.")


async def book(
    session: AsyncSession, rules: BookingRules, principal: Principal, data: BookIn
) -> dict[str, Any]:
    """Turn a taken slot away at once; else lock the provider, check the slot and write the
    appointment and its event (the caller adds the idempotency record). The exclusion
    constraints have the last word."""
    patient_id = await _patient_for(session, principal, data)
    await _refuse_if_taken(session, rules, data.provider_id, data.start)
    locked = await repository.lock_for_booking(session, data.provider_id, patient_id)
    if locked is None:
        raise NotFound("No such provider.")
    require_own_clinic(principal, locked.clinic_id, "book appointments")
    if locked.patient_key is None:
        raise ValidationFailed("patient_id does not name a patient", loc=("body", "patient_id"))
    starts_at, ends_at = _bookable(
        await availability_service.check_slot(
            session, rules, data.provider_id, locked.tz, data.start
        )
    )
    appointment_id = new_id()
    booked = events.payload(
        appointment_id,
        data.provider_id,
        patient_id,
        locked.clinic_id,
        starts_at,
        ends_at,
        timezone=locked.tz,
    )
    try:
        row = await repository.insert_booking(
            session,
            appointment_id=appointment_id,
            provider_id=data.provider_id,
            provider_key=locked.provider_key,
            patient_id=patient_id,
            patient_key=locked.patient_key,
            clinic_id=locked.clinic_id,
            starts_at=starts_at,
            ends_at=ends_at,
            events=[(Topic.BOOKED, booked)],
        )
    except IntegrityError as exc:
        # The exclusion constraints are the backstop; the lock makes this rare.
        raise _overlap_error(exc) from exc
    await _audit(session, principal, Topic.BOOKED, [row.id])
    # The response from the rows in hand: the insert's RETURNING and the lock's read.
    return _item(
        row.id,
        row.provider_id,
        row.patient_id,
        row.clinic_id,
        row.starts_at,
        row.ends_at,
        row.status,
        row.video_status,
        row.cancel_reason,
        row.created_at,
        row.updated_at,
        locked.provider_name,
        locked.specialty,
        locked.tz,
        locked.patient_name,
    )


async def visible_row(
    session: AsyncSession, principal: Principal, appointment_id: uuid.UUID
) -> AnyRow:
    """The appointment view row if the caller may see it, else `NotFound`."""
    return await _visible(session, principal, appointment_id)


async def view_for_job(session: AsyncSession, appointment_id: uuid.UUID) -> AnyRow | None:
    return await repository.get_view_for_job(session, appointment_id)


async def get(
    session: AsyncSession, principal: Principal, appointment_id: uuid.UUID
) -> AppointmentOut:
    return _out(await _visible(session, principal, appointment_id))


def _listed(row: AnyRow) -> dict[str, Any]:
    """One listed appointment in AppointmentOut's shape and key order, from a row of
    repository.LISTED_COLUMNS (no ORM instance, no model: the page is serialised once)."""
    return _item(*row)


def _item(
    appointment_id: Any,
    provider_id: Any,
    patient_id: Any,
    clinic_id: Any,
    starts_at: datetime,
    ends_at: datetime,
    status: str,
    video_status: str,
    cancel_reason: str | None,
    created_at: datetime,
    updated_at: datetime,
    provider_name: str,
    specialty: str,
    tz: str,
    patient_name: str,
) -> dict[str, Any]:
    """AppointmentOut's plain values, in its key order (`item_json` renders its bytes); the
    arguments in the order of repository.LISTED_COLUMNS."""
    zone = ZoneInfo(tz)  # what to_local_iso does, with one zone lookup for both ends
    return {
        "id": appointment_id,
        "provider_id": provider_id,
        "patient_id": patient_id,
        "clinic_id": clinic_id,
        "start": starts_at.astimezone(zone).isoformat(),
        "end": ends_at.astimezone(zone).isoformat(),
        "status": status,
        "video_status": video_status,
        "cancel_reason": cancel_reason,
        "created_at": created_at,
        "updated_at": updated_at,
        "provider": {"id": provider_id, "full_name": provider_name, "specialty": specialty},
        "patient": {"id": patient_id, "full_name": patient_name},
    }


async def list_appointments(
    executor: sql.Executor,
    principal: Principal,
    params: PageParams,
    *,
    statuses: Sequence[AppointmentStatus],
    starts_from: datetime | None,
    starts_before: datetime | None,
    order: Order,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of AppointmentOut-shaped dicts (for `page_response`) and the next cursor."""
    after = params.position(parse_datetime, parse_uuid)
    rows = await repository.list_views(
        executor,
        _visibility(principal),
        statuses=[s.value for s in statuses],
        starts_from=starts_from,
        starts_before=starts_before,
        descending=order is Order.DESC,
        after=after,
        limit=params.limit,
    )
    # Positions 4 and 0 of LISTED_COLUMNS: starts_at and id, the keyset.
    items, cursor = build_page(rows, params.limit, lambda r: (r[4], r[0]))
    return [_listed(r) for r in items], cursor


async def change_status(
    session: AsyncSession,
    principal: Principal,
    appointment_id: uuid.UUID,
    to: AppointmentStatus,
    *,
    reason: str | None = None,
) -> dict[str, Any]:
    """The changed appointment in AppointmentOut's shape (for `item_response`), from the rows
    of the two statements: no ORM instance, no model."""
    if to is not AppointmentStatus.CANCELLED and principal.role not in STAFF_SIDE:
        raise Forbidden("Only providers, staff and admins record visits.")
    row = await repository.get_listed(session, appointment_id, _visibility(principal))
    if row is None:
        raise NotFound("No such appointment.")  # also when it is not the caller's to see
    event = events.payload_of(
        row, status=to.value, by=str(principal.user_id), reason=reason, timezone=row.timezone
    )
    changed = await repository.transition(
        session,
        appointment_id,
        allowed_from=ALLOWED_FROM[to],
        to=to,
        cancel_reason=reason,
        events=[(events.STATUS_TOPICS[to], event)],
    )
    if changed is None:
        raise InvalidTransition(f"An appointment that is {row.status} cannot become {to.value}.")
    await _audit(session, principal, events.STATUS_TOPICS[to], [appointment_id], _why(reason))
    item = _listed(row)
    item.update(
        status=changed.status, cancel_reason=changed.cancel_reason, updated_at=changed.updated_at
    )
    return item


async def reschedule(
    session: AsyncSession,
    rules: BookingRules,
    principal: Principal,
    appointment_id: uuid.UUID,
    start: datetime,
) -> AppointmentOut:
    row = await _visible(session, principal, appointment_id)
    appointment: Appointment = row.Appointment
    if appointment.status != AppointmentStatus.BOOKED:
        raise InvalidTransition(f"An appointment that is {appointment.status} cannot be moved.")
    provider = await repository.lock_provider(session, appointment.provider_id)
    if provider is None:
        raise NotASlot("The provider no longer takes appointments.")
    starts_at, ends_at = _bookable(
        await availability_service.check_slot(
            session,
            rules,
            provider.user_id,
            provider.timezone,
            start,
            ignore_appointment_id=appointment.id,
        )
    )
    old_start = appointment.starts_at
    try:
        moved = await repository.move(session, appointment.id, starts_at=starts_at, ends_at=ends_at)
    except IntegrityError as exc:
        raise _overlap_error(exc) from exc
    if moved is None:
        raise InvalidTransition("The appointment changed meanwhile and can no longer be moved.")
    await outbox.emit(
        session,
        Topic.RESCHEDULED,
        events.payload_of(
            appointment,
            by=str(principal.user_id),
            old_starts_at=old_start.isoformat(),
            starts_at=events.utc_iso(starts_at),
            ends_at=events.utc_iso(ends_at),
            previous_starts_at=events.utc_iso(old_start),
            previous_ends_at=events.utc_iso(appointment.ends_at),
            timezone=provider.timezone,
        ),
    )
    await _audit(
        session,
        principal,
        Topic.RESCHEDULED,
        [appointment.id],
        {"from": old_start.isoformat(), "to": starts_at.isoformat()},
    )
    return _out(row, starts_at=starts_at, ends_at=ends_at, updated_at=moved.updated_at)


def _why(reason: str | None) -> dict[str, Any]:
    return {"reason": reason} if reason else {}


async def _audit(
    session: AsyncSession,
    principal: Principal,
    action: str,
    ids: Sequence[uuid.UUID],
    details: dict[str, Any] | None = None,
) -> None:
    """Staff and admin actions on appointments go to the audit log, in the same transaction."""
    if principal.role in OPERATORS:
        await audit.record(session, principal.user_id, action, "appointment", ids, details)


async def bulk(session: AsyncSession, principal: Principal, data: BulkIn) -> BulkOut:
    """Up to 500 status changes as one set-based statement, one outbox INSERT and one audit
    INSERT; a result per requested id, in the request's order."""
    if principal.role not in STAFF_SIDE:
        raise Forbidden("Only providers, staff and admins change appointments in bulk.")
    to = BULK_ACTIONS[data.action]
    reason = data.reason if to is AppointmentStatus.CANCELLED else None
    rows = await repository.bulk_transition(
        session,
        _visibility(principal),
        list(dict.fromkeys(data.ids)),
        allowed_from=ALLOWED_FROM[to],
        to=to,
        cancel_reason=reason,
    )
    changed = [row for row in rows if row.changed]
    await outbox.emit_many(
        session,
        [
            (
                events.STATUS_TOPICS[to],
                events.payload_of(row, status=to.value, by=str(principal.user_id), reason=reason),
            )
            for row in changed
        ],
    )
    await _audit(
        session,
        principal,
        events.STATUS_TOPICS[to],
        [row.id for row in changed],
        {"bulk": True, **_why(reason)},
    )
    outcome = {row.id: row for row in rows}
    return BulkOut(results=[_bulk_result(outcome[i]) for i in data.ids])


def _bulk_result(row: AnyRow) -> BulkResult:
    if row.changed:
        return BulkResult(id=row.id, ok=True)
    return BulkResult(id=row.id, ok=False, code="invalid_transition" if row.seen else "not_found")


async def cancel_range(
    session: AsyncSession, principal: Principal, provider_id: uuid.UUID, data: RangeCancelIn
) -> RangeCancelOut:
    """A sick day: every booked visit of the provider that starts in [from, to) is cancelled
    and each patient is told through the outbox. Checked-in visits are left to staff."""
    if principal.role not in OPERATORS:
        raise Forbidden("Only staff and admins cancel a provider's appointments.")
    if data.to <= data.from_:
        raise ValidationFailed("`to` must be after `from`", loc=("body", "to"))
    if data.to - data.from_ > RANGE_CANCEL_MAX:
        raise RangeTooLarge("A range cancellation spans at most 366 days.")
    # The provider lock orders this with bookings: none lands in the range half-way through.
    # Also for a provider no longer active: their remaining visits are what must be cancelled.
    await _lock_provider(session, principal, provider_id, "cancel appointments", active_only=False)
    rows = await repository.cancel_range(
        session, provider_id, starts_from=data.from_, starts_before=data.to, reason=data.reason
    )
    by = str(principal.user_id)
    await outbox.emit_many(
        session,
        [
            (
                events.STATUS_TOPICS[AppointmentStatus.CANCELLED],
                events.payload_of(row, status="cancelled", by=by, reason=data.reason),
            )
            for row in rows
        ],
    )
    await _audit(
        session,
        principal,
        events.STATUS_TOPICS[AppointmentStatus.CANCELLED],
        [row.id for row in rows],
        {"range": [data.from_.isoformat(), data.to.isoformat()], **_why(data.reason)},
    )
    return RangeCancelOut(cancelled=len(rows))
