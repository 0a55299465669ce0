from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.kit.schemas import Instant
from app.models import AppointmentStatus

Reason = Annotated[str, Field(max_length=500)]


class BookIn(BaseModel):
    provider_id: uuid.UUID
    start: Instant
    patient_id: uuid.UUID | None = Field(
        default=None, description="Required when staff or an admin books for a patient"
    )


class CancelIn(BaseModel):
    reason: Reason = ""


class RescheduleIn(BaseModel):
    start: Instant


class ProviderRef(BaseModel):
    id: uuid.UUID
    full_name: str
    specialty: str


class PatientRef(BaseModel):
    id: uuid.UUID
    full_name: str


class AppointmentOut(BaseModel):
    id: uuid.UUID
    provider_id: uuid.UUID
    patient_id: uuid.UUID
    clinic_id: uuid.UUID
    start: str
    end: str
    status: AppointmentStatus
    video_status: str
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime
    provider: ProviderRef
    patient: PatientRef


class Order(StrEnum):
    ASC = "asc"
    DESC = "desc"


class BulkAction(StrEnum):
    CANCEL = "cancel"
    CHECK_IN = "check_in"
    COMPLETE = "complete"
    NO_SHOW = "no_show"


BULK_MAX = 500


class BulkIn(BaseModel):
    action: BulkAction
    ids: Annotated[list[uuid.UUID], Field(min_length=1, max_length=BULK_MAX)]
    reason: Reason = ""


class BulkResult(BaseModel):
    id: uuid.UUID
    ok: bool
    code: Literal["not_found", "invalid_transition"] | None = None


class BulkOut(BaseModel):
    results: list[BulkResult]


class RangeCancelIn(BaseModel):
    from_: Instant = Field(alias="from")
    to: Instant
    reason: Reason = ""


class RangeCancelOut(BaseModel):
    cancelled: int
