from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import repository
from app.audit.schemas import AuditEntryOut
from app.kit.errors import ValidationFailed
from app.kit.pagination import PageParams, build_page


def _position(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("not an audit position")
    return value


async def list_entries(
    session: AsyncSession,
    params: PageParams,
    *,
    entity: str | None,
    entity_id: str | None,
    actor_id: uuid.UUID | None,
) -> tuple[list[AuditEntryOut], str | None]:
    if entity_id is not None and entity is None:
        # An id means nothing without its kind, and no index serves it alone.
        raise ValidationFailed("`entity_id` needs `entity`", loc=("query", "entity"))
    position = params.position(_position)
    before_id = position[0] if position is not None else None
    rows = await repository.page(
        session,
        entity=entity,
        entity_id=entity_id,
        actor_id=actor_id,
        before_id=before_id,
        limit=params.limit,
    )
    items, cursor = build_page(rows, params.limit, lambda row: (row.id,))
    return [AuditEntryOut.model_validate(row, from_attributes=True) for row in items], cursor
