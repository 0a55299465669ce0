from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditEntryOut
from app.auth.dependencies import AdminPrincipal
from app.kit.db import PrimaryReadSession
from app.kit.pagination import Page, Pagination

router = APIRouter(tags=["audit"])

_Filter = Annotated[str | None, Query(min_length=1, max_length=200)]


@router.get("/v1/audit", response_model=Page[AuditEntryOut])
async def list_audit(
    principal: AdminPrincipal,
    session: PrimaryReadSession,  # an audit trail that lags is no audit trail
    page: Pagination,
    entity: _Filter = None,
    entity_id: _Filter = None,
    actor_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[AuditEntryOut]:
    items, cursor = await service.list_entries(
        session, page, entity=entity, entity_id=entity_id, actor_id=actor_id
    )
    return Page(items=items, next_cursor=cursor)
