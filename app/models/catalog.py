from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, created_at_column, updated_at_column, uuid_pk


class Clinic(Base):
    __tablename__ = "clinics"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()


class Specialty(Base):
    __tablename__ = "specialties"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(Text)


Index("uq_specialties_name_lower", func.lower(Specialty.name), unique=True)


class Provider(Base):
    __tablename__ = "providers"
    __table_args__ = (
        CheckConstraint("slot_minutes BETWEEN 5 AND 480", name="slot_minutes"),
        Index("ix_providers_clinic_id_specialty_id", "clinic_id", "specialty_id"),
        Index("ix_providers_specialty_id", "specialty_id"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    # Integer twin of the id, copied onto appointments for the overlap exclusion constraint.
    key: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    clinic_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("clinics.id"))
    specialty_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("specialties.id"))
    bio: Mapped[str] = mapped_column(Text, server_default="")
    timezone: Mapped[str] = mapped_column(Text)
    slot_minutes: Mapped[int]
    is_active: Mapped[bool] = mapped_column(server_default="true")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
