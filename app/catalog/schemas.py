from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from app.auth.schemas import FullName, Password
from app.kit.schemas import LongText, ShortText, TimeZoneName


class ClinicIn(BaseModel):
    name: ShortText
    timezone: TimeZoneName


class ClinicOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    timezone: str


class SpecialtyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str


class ProviderIn(BaseModel):
    email: EmailStr
    password: Password
    full_name: FullName
    clinic_id: uuid.UUID
    specialty: ShortText
    timezone: TimeZoneName
    slot_minutes: Annotated[int, Field(ge=5, le=480)]
    bio: LongText = ""


class ProviderCreated(BaseModel):
    id: uuid.UUID
    full_name: str
    specialty: str
    clinic_id: uuid.UUID
    timezone: str
    slot_minutes: int


class ClinicSummary(BaseModel):
    id: uuid.UUID
    name: str
    timezone: str


class ProviderSummary(BaseModel):
    id: uuid.UUID
    full_name: str
    specialty: str
    clinic: ClinicSummary


class ProviderProfile(ProviderSummary):
    clinic_id: uuid.UUID
    bio: str
    timezone: str
    slot_minutes: int
