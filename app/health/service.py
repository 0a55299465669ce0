from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.health import repository
from app.health.schemas import Readiness
from app.kit.db import Database

logger = logging.getLogger("carebook.health")

DATABASE_CHECK_SECONDS = 1.0
REDIS_CHECK_SECONDS = 0.5


async def _database_ok(database: Database) -> bool:
    try:
        await asyncio.wait_for(repository.ping(database.primary), DATABASE_CHECK_SECONDS)
    except Exception as exc:  # whatever the failure, the answer is "not ready"
        logger.warning("readiness: database check failed", extra={"error": type(exc).__name__})
        return False
    return True


async def _redis_ok(redis: Redis | None) -> bool:
    if redis is None:
        return False
    try:
        return bool(await asyncio.wait_for(redis.ping(), REDIS_CHECK_SECONDS))
    except (TimeoutError, RedisError, OSError) as exc:
        logger.warning("readiness: redis check failed", extra={"error": type(exc).__name__})
        return False


async def readiness(database: Database, redis: Redis | None) -> Readiness:
    database_ok, redis_ok = await asyncio.gather(_database_ok(database), _redis_ok(redis))
    return Readiness(
        status="ok" if database_ok else "unavailable",
        database="ok" if database_ok else "down",
        redis="ok" if redis_ok else "degraded",
    )
