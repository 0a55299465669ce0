from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

Password = Annotated[str, Field(min_length=8, max_length=128)]
FullName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
RefreshTokenStr = Annotated[str, Field(min_length=16, max_length=256)]


class RegisterIn(BaseModel):
    email: EmailStr
    password: Password
    full_name: FullName


class CreateUserIn(BaseModel):
    email: EmailStr
    password: Password
    full_name: FullName
    role: Literal["staff", "admin"]
    clinic_id: uuid.UUID | None = None


class TokenIn(BaseModel):
    email: EmailStr
    password: Annotated[str, Field(min_length=1, max_length=128)]


class RefreshIn(BaseModel):
    refresh_token: RefreshTokenStr


class LogoutIn(BaseModel):
    refresh_token: RefreshTokenStr


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    full_name: str
    role: str
    clinic_id: uuid.UUID | None
    is_active: bool
    created_at: datetime
