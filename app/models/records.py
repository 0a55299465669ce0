from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, uuid_pk


class MedicalRecord(Base):
    """Metadata only: the file itself lives in object storage behind pre-signed URLs (F20)."""

    __tablename__ = "medical_records"
    __table_args__ = (
        CheckConstraint("size_bytes >= 0", name="size_bytes"),
        Index("ix_medical_records_patient_id_uploaded_at", "patient_id", "uploaded_at", "id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    uploaded_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    record_type: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    storage_key: Mapped[str] = mapped_column(Text, unique=True)
    content_type: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    uploaded_at: Mapped[datetime] = mapped_column(server_default=func.now())
