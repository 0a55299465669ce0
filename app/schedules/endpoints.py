from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from app.auth.dependencies import CurrentPrincipal
from app.kit.db import PrimaryReadSession, WriteSession
from app.schedules import service
from app.schedules.schemas import ScheduleIn, ScheduleOut, TimeOffIn, TimeOffOut

router = APIRouter(tags=["schedules"])


@router.get("/v1/providers/{provider_id}/schedule", response_model=ScheduleOut)
async def get_schedule(
    provider_id: uuid.UUID, principal: CurrentPrincipal, session: PrimaryReadSession
) -> ScheduleOut:
    return await service.get_schedule(session, principal, provider_id)


@router.put("/v1/providers/{provider_id}/schedule", response_model=ScheduleOut)
async def replace_schedule(
    provider_id: uuid.UUID, data: ScheduleIn, principal: CurrentPrincipal, session: WriteSession
) -> ScheduleOut:
    return await service.replace_schedule(session, principal, provider_id, data)


@router.get("/v1/providers/{provider_id}/time-off", response_model=list[TimeOffOut])
async def list_time_off(
    provider_id: uuid.UUID, principal: CurrentPrincipal, session: PrimaryReadSession
) -> list[TimeOffOut]:
    return await service.list_time_off(session, principal, provider_id)


@router.post(
    "/v1/providers/{provider_id}/time-off",
    status_code=status.HTTP_201_CREATED,
    response_model=TimeOffOut,
)
async def add_time_off(
    provider_id: uuid.UUID, data: TimeOffIn, principal: CurrentPrincipal, session: WriteSession
) -> TimeOffOut:
    return await service.add_time_off(session, principal, provider_id, data)


@router.delete(
    "/v1/providers/{provider_id}/time-off/{time_off_id}", status_code=status.HTTP_204_NO_CONTENT
)
async def remove_time_off(
    provider_id: uuid.UUID,
    time_off_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: WriteSession,
) -> None:
    await service.remove_time_off(session, principal, provider_id, time_off_id)
