from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        # Both end in `id`: GET /v1/audit pages newest first by `id` (migration 0003).
        Index("ix_audit_log_entity_entity_id_id", "entity", "entity_id", "id"),
        Index("ix_audit_log_actor_id_id", "actor_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    # No foreign key: the audit trail must outlive the rows it speaks of.
    actor_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(Text)
    entity: Mapped[str] = mapped_column(Text)
    entity_id: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(server_default=func.now())
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
