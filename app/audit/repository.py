from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditLog


async def page(
    session: AsyncSession,
    *,
    entity: str | None,
    entity_id: str | None,
    actor_id: uuid.UUID | None,
    before_id: int | None,
    limit: int,
) -> Sequence[AuditLog]:
    """Newest first in insertion order (`id`, an identity, descending), keyset on `id`.

    Unfiltered, that is a backward scan of the primary key; filtered by entity and id or by
    actor, of ix_audit_log_entity_entity_id_id / ix_audit_log_actor_id_id. `at` is each
    transaction's start time, so it is not a strict order of insertion and `id` is the key
    that never skips or repeats a row across pages.
    """
    query = select(AuditLog)
    if entity is not None:
        query = query.where(AuditLog.entity == entity)
    if entity_id is not None:
        query = query.where(AuditLog.entity_id == entity_id)
    if actor_id is not None:
        query = query.where(AuditLog.actor_id == actor_id)
    if before_id is not None:
        query = query.where(AuditLog.id < before_id)
    query = query.order_by(AuditLog.id.desc()).limit(limit + 1)
    return (await session.scalars(query)).all()
