from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, Integer, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, created_at_column


class OutboxEvent(Base):
    """An event written in the same transaction as the change it describes (audit F9/F10)."""

    __tablename__ = "outbox"
    __table_args__ = (
        # The relay's claim query reads only unpublished rows, oldest first.
        Index("ix_outbox_unpublished", "id", postgresql_where="published_at IS NULL"),
        # The sweeper looks for events handed to the queue but never processed.
        Index(
            "ix_outbox_unprocessed",
            "published_at",
            postgresql_where="published_at IS NOT NULL AND processed_at IS NULL",
        ),
        Index(
            "ix_outbox_processed_at", "processed_at", postgresql_where="processed_at IS NOT NULL"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    topic: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = created_at_column()
    published_at: Mapped[datetime | None]
    # Set by the job that handled it; published but unprocessed for long means the job was
    # lost (ARQ keeps jobs only in Redis), and the sweeper hands the event over again.
    processed_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
