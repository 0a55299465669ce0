from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    and_,
    bindparam,
    exists,
    false,
    insert,
    literal,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit.db import AnyRow, AnySelect
from app.models import Appointment, AppointmentStatus, MedicalRecord, Role, User


@dataclass(frozen=True)
class RecordAccess:
    """Who may see a patient's records, as one SQL condition (so the check rides along with
    the query that reads or writes them: a constant number of statements).

    The patient themself; a provider with a visit with them; staff of a clinic where the
    patient has a visit; an admin. A cancelled visit grants nothing: a booking made by mistake
    must not open a patient's file for good.
    """

    role: Role
    user_id: uuid.UUID
    patient_id: uuid.UUID

    def clause(self) -> Any:
        visits = (Appointment.patient_id == self.patient_id) & (
            Appointment.status != AppointmentStatus.CANCELLED.value
        )
        if self.role is Role.PATIENT:
            return true() if self.user_id == self.patient_id else false()
        if self.role is Role.PROVIDER:
            return exists().where(visits, Appointment.provider_id == self.user_id)
        if self.role is Role.STAFF:
            clinic = select(User.clinic_id).where(User.id == self.user_id).scalar_subquery()
            return exists().where(visits, Appointment.clinic_id == clinic)
        # Admin: any patient that exists (the records of a non-patient are "not found").
        return exists().where(User.id == self.patient_id, User.role == Role.PATIENT.value)


_r = MedicalRecord.__table__.c
_visits = Appointment.__table__.c
_users = User.__table__.c
# What a listed record needs: its API fields (in RecordOut's order) and its file's key.
LISTED_COLUMNS = (
    _r.id,
    _r.patient_id,
    _r.uploaded_by,
    _r.record_type,
    _r.title,
    _r.content_type,
    _r.size_bytes,
    _r.uploaded_at,
    _r.storage_key,
)
_UUID = PG_UUID(as_uuid=True)


def _bound_access(role: Role, *, own: bool) -> Any:
    """RecordAccess.clause over table columns, with the ids as bound parameters."""
    patient_id, user_id = bindparam("patient_id", type_=_UUID), bindparam("user_id", type_=_UUID)
    visits = (_visits.patient_id == patient_id) & (
        _visits.status != AppointmentStatus.CANCELLED.value
    )
    if role is Role.PATIENT:
        return true() if own else false()
    if role is Role.PROVIDER:
        return exists().where(visits, _visits.provider_id == user_id)
    if role is Role.STAFF:
        clinic = select(_users.clinic_id).where(_users.id == user_id).scalar_subquery()
        return exists().where(visits, _visits.clinic_id == clinic)
    return exists().where(_users.id == patient_id, _users.role == Role.PATIENT.value)


@functools.cache
def _page_statement(role: Role, *, own: bool, after: bool) -> AnySelect:
    """The page statement of one shape, built once (values are bound parameters)."""
    records = select(*LISTED_COLUMNS).where(_r.patient_id == bindparam("patient_id", type_=_UUID))
    if after:
        last = tuple_(
            bindparam("after_at", type_=_r.uploaded_at.type), bindparam("after_id", type_=_UUID)
        )
        records = records.where(tuple_(_r.uploaded_at, _r.id) < last)
    ordered = records.order_by(_r.uploaded_at.desc(), _r.id.desc())
    rows = ordered.limit(bindparam("limit", type_=Integer)).subquery("r")
    gate = select(_bound_access(role, own=own).label("allowed")).subquery("gate")
    return (
        select(gate.c.allowed, *rows.c)
        .select_from(gate.outerjoin(rows, gate.c.allowed))
        .order_by(rows.c.uploaded_at.desc(), rows.c.id.desc())
    )


async def page(
    session: AsyncSession,
    access: RecordAccess,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> tuple[bool, Sequence[AnyRow]]:
    """Whether the caller may see the patient's records, and up to `limit + 1` of them (rows
    of `allowed` and LISTED_COLUMNS), newest first, in one statement: `(SELECT <access>) LEFT
    JOIN (the page) ON <access>`. Keyset on (uploaded_at, id), served by
    ix_medical_records_patient_id_uploaded_at."""
    query = _page_statement(
        access.role, own=access.user_id == access.patient_id, after=after is not None
    )
    params: dict[str, Any] = {
        "patient_id": access.patient_id,
        "user_id": access.user_id,
        "limit": limit + 1,
    }
    if after is not None:
        params["after_at"], params["after_id"] = after
    result = (await session.execute(query, params)).all()
    allowed = bool(result and result[0].allowed)
    return allowed, [row for row in result if allowed and row.id is not None]


async def get(
    session: AsyncSession, access: RecordAccess, record_id: uuid.UUID
) -> MedicalRecord | None:
    """The record, when it is the patient's and the caller may see it (one statement)."""
    query = select(MedicalRecord).where(
        MedicalRecord.id == record_id,
        MedicalRecord.patient_id == access.patient_id,
        access.clause(),
    )
    return (await session.scalars(query)).one_or_none()


async def insert_if_allowed(
    session: AsyncSession, access: RecordAccess, values: dict[str, Any]
) -> MedicalRecord | None:
    """INSERT ... SELECT ... WHERE <access> RETURNING: the check and the write are one
    statement; None when the caller may not add records for the patient."""
    columns = list(values)
    source = select(*(literal(values[c], MedicalRecord.__table__.c[c].type) for c in columns))
    statement = (
        insert(MedicalRecord)
        .from_select(columns, source.where(and_(access.clause())))
        .returning(MedicalRecord)
    )
    return (await session.scalars(statement)).one_or_none()
