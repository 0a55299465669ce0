from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis

from app.health import service
from app.health.schemas import Liveness, Readiness
from app.kit.db import Database, get_database
from app.kit.redis import get_redis

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=Liveness)
async def live() -> Liveness:
    """The process is up and its event loop answers; touches neither the DB nor Redis."""
    return Liveness()


@router.get("/health/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(
    database: Annotated[Database, Depends(get_database)],
    redis: Annotated[Redis | None, Depends(get_redis)],
    request: Request,
) -> JSONResponse:
    adapters = (request.app.state.videosdk, request.app.state.fcm)
    result = await service.readiness(database, redis, adapters)
    return JSONResponse(
        result.model_dump(),
        status_code=200 if result.database == "ok" else 503,
        headers={"Cache-Control": "no-store"},
    )
