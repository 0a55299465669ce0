"""Writing the audit trail: who did what to which entity (DESIGN §3 `audit_log`).

Rows are written in the caller's transaction, so an action and its audit row commit together.
Many entities in one call are one multi-row INSERT (a bulk action stays a constant number of
statements).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditLog


async def record(
    session: AsyncSession,
    actor_id: uuid.UUID | None,
    action: str,
    entity: str,
    entity_ids: Iterable[uuid.UUID | str],
    details: dict[str, Any] | None = None,
) -> None:
    rows = [
        {
            "actor_id": actor_id,
            "action": action,
            "entity": entity,
            "entity_id": str(entity_id),
            "details": details or {},
        }
        for entity_id in entity_ids
    ]
    if rows:
        await session.execute(insert(AuditLog), rows)
