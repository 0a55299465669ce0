from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    Text,
    func,
    literal,
    literal_column,
)
from sqlalchemy.dialects.postgresql import JSONB, ExcludeConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, created_at_column, updated_at_column, uuid_pk


class AppointmentStatus(enum.StrEnum):
    BOOKED = "booked"
    CHECKED_IN = "checked_in"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"


ACTIVE_STATUSES = (AppointmentStatus.BOOKED, AppointmentStatus.CHECKED_IN)
_ACTIVE_SQL = "status IN ('booked', 'checked_in')"
VIDEO_TO_RECONCILE_SQL = (
    "(status IN ('booked', 'checked_in') AND video_status IN ('pending', 'failed'))"
    " OR (status = 'cancelled' AND video_room_id IS NOT NULL)"
)


class VideoStatus(enum.StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    NOT_REQUIRED = "not_required"


def _point(column: str) -> Any:
    # A one-point int8range stands for equality inside a GiST exclusion constraint, because
    # the embedded PostgreSQL ships no btree_gist.
    return func.int8range(literal_column(column), literal_column(column), literal("[]"))


_SPAN = func.tstzrange(literal_column("starts_at"), literal_column("ends_at"), literal("[)"))


class Appointment(Base):
    __tablename__ = "appointments"
    __table_args__ = (
        CheckConstraint("starts_at < ends_at", name="starts_before_ends"),
        # Bounds the availability anti-join's index range (see app/availability/repository.py).
        CheckConstraint("ends_at - starts_at <= interval '1 day'", name="at_most_a_day"),
        CheckConstraint(
            "status IN ('booked', 'checked_in', 'completed', 'cancelled', 'no_show')",
            name="status",
        ),
        CheckConstraint(
            "video_status IN ('pending', 'ready', 'failed', 'not_required')", name="video_status"
        ),
        ExcludeConstraint(
            (_point("provider_key"), "&&"),
            (_SPAN, "&&"),
            using="gist",
            where=_ACTIVE_SQL,
            name="ex_appointments_provider_overlap",
        ),
        ExcludeConstraint(
            (_point("patient_key"), "&&"),
            (_SPAN, "&&"),
            using="gist",
            where=_ACTIVE_SQL,
            name="ex_appointments_patient_overlap",
        ),
        # Keyset listings: (owner, starts_at, id) serves "mine, ordered by start".
        Index("ix_appointments_patient_id_starts_at", "patient_id", "starts_at", "id"),
        Index("ix_appointments_provider_id_starts_at", "provider_id", "starts_at", "id"),
        Index("ix_appointments_clinic_id_starts_at", "clinic_id", "starts_at", "id"),
        Index("ix_appointments_starts_at", "starts_at", "id"),
        # The availability anti-join and the booking check read only active appointments;
        # INCLUDE (ends_at) lets them answer from the index alone.
        Index(
            "ix_appointments_provider_id_active",
            "provider_id",
            "starts_at",
            postgresql_include=["ends_at"],
            postgresql_where=_ACTIVE_SQL,
        ),
        # The video reconciler's work list: rooms to create, and rooms of cancelled visits to
        # delete. Tiny in steady state, so the cron's scan costs nothing at 10 M rows.
        Index(
            "ix_appointments_video_to_reconcile",
            "created_at",
            postgresql_where=VIDEO_TO_RECONCILE_SQL,
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("providers.user_id"))
    provider_key: Mapped[int] = mapped_column(BigInteger)
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    patient_key: Mapped[int] = mapped_column(BigInteger)
    clinic_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("clinics.id"))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(Text, server_default=AppointmentStatus.BOOKED.value)
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    video_status: Mapped[str] = mapped_column(Text, server_default=VideoStatus.PENDING.value)
    video_room_id: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "key"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = created_at_column()
    completed_at: Mapped[datetime | None]
