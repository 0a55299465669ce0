from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.auth.dependencies import CurrentPrincipal
from app.kit.db import PrimaryReadSession, WriteSession
from app.kit.pagination import Page, Pagination
from app.notifications import service
from app.notifications.schemas import DeviceIn, DeviceOut, NotificationOut

router = APIRouter(tags=["notifications"])


@router.post(
    "/v1/me/devices",
    response_model=DeviceOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": DeviceOut, "description": "The token was registered before"}},
)
async def register_device(
    data: DeviceIn, principal: CurrentPrincipal, session: WriteSession, response: Response
) -> DeviceOut:
    device, created = await service.register_device(session, principal, data)
    if not created:
        response.status_code = status.HTTP_200_OK
    return device


@router.get("/v1/me/notifications", response_model=Page[NotificationOut])
async def list_notifications(
    principal: CurrentPrincipal,
    session: PrimaryReadSession,
    page: Pagination,
    unread: Annotated[bool, Query(description="Only notifications not yet read")] = False,
) -> Page[NotificationOut]:
    items, cursor = await service.feed(session, principal, page, unread_only=unread)
    return Page(items=items, next_cursor=cursor)


@router.post("/v1/me/notifications/{notification_id}/read", response_model=NotificationOut)
async def mark_read(
    notification_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession
) -> NotificationOut:
    return await service.mark_read(session, principal, notification_id)
