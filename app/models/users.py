from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, created_at_column, updated_at_column, uuid_pk


class Role(enum.StrEnum):
    PATIENT = "patient"
    PROVIDER = "provider"
    STAFF = "staff"
    ADMIN = "admin"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('patient', 'provider', 'staff', 'admin')", name="role"),
        CheckConstraint("role <> 'staff' OR clinic_id IS NOT NULL", name="staff_has_clinic"),
        Index("ix_users_clinic_id", "clinic_id", postgresql_where="clinic_id IS NOT NULL"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    # A compact integer twin of `id` so the patient-overlap exclusion constraint can use
    # int8range (no btree_gist needed).
    key: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    email: Mapped[str] = mapped_column(Text)
    password_hash: Mapped[str] = mapped_column(Text)
    full_name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    clinic_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("clinics.id"))
    is_active: Mapped[bool] = mapped_column(server_default="true")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


# Case-insensitive uniqueness without citext (the embedded server ships no contrib extensions).
Index("uq_users_email_lower", func.lower(User.email), unique=True)


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"
    __table_args__ = (
        Index("ix_refresh_tokens_family_id", "family_id"),
        Index("ix_refresh_tokens_user_id", "user_id"),
        Index("ix_refresh_tokens_expires_at", "expires_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    family_id: Mapped[uuid.UUID]
    token_hash: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = created_at_column()
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
