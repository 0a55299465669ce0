from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, false, insert, literal, select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

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


async def page(
    session: AsyncSession,
    access: RecordAccess,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> tuple[bool, Sequence[MedicalRecord]]:
    """Whether the caller may see the patient's records, and up to `limit + 1` of them, newest
    first, in one statement: `(SELECT <access>) LEFT JOIN (the page) ON <access>`. Keyset on
    (uploaded_at, id), served by ix_medical_records_patient_id_uploaded_at."""
    records = select(MedicalRecord).where(MedicalRecord.patient_id == access.patient_id)
    if after is not None:
        records = records.where(tuple_(MedicalRecord.uploaded_at, MedicalRecord.id) < after)
    ordered = records.order_by(MedicalRecord.uploaded_at.desc(), MedicalRecord.id.desc())
    rows = ordered.limit(limit + 1).subquery("r")
    record = aliased(MedicalRecord, rows)
    gate = select(access.clause().label("allowed")).subquery("gate")
    query = (
        select(gate.c.allowed, record)
        .select_from(gate.outerjoin(rows, gate.c.allowed))
        .order_by(record.uploaded_at.desc(), record.id.desc())
    )
    result = (await session.execute(query)).all()
    allowed = bool(result and result[0].allowed)
    return allowed, [row[1] for row in result if allowed and row[1] is not None]


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
