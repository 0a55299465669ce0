from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import ForeignKey, Integer, PrimaryKeyConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class ClinicDailyStat(Base):
    """Pre-aggregated per-clinic counts per day, so analytics never scans appointments (F11)."""

    __tablename__ = "clinic_daily_stats"
    __table_args__ = (PrimaryKeyConstraint("clinic_id", "day"),)

    clinic_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("clinics.id", ondelete="CASCADE"))
    day: Mapped[date]
    booked: Mapped[int] = mapped_column(Integer, server_default="0")
    completed: Mapped[int] = mapped_column(Integer, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, server_default="0")
    no_show: Mapped[int] = mapped_column(Integer, server_default="0")
