from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.health import repository
from app.health.schemas import IntegrationState, Readiness
from app.kit.db import Database
from app.kit.resilience import ServiceAdapter, published_breaker_states

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


async def _integrations(
    adapters: Sequence[ServiceAdapter], redis: Redis | None, redis_ok: bool
) -> dict[str, IntegrationState]:
    enabled = [adapter.service for adapter in adapters if adapter.enabled]
    states: dict[str, str | None] = {}
    if enabled and redis is not None and redis_ok:
        try:
            reported = await asyncio.wait_for(
                published_breaker_states(redis, enabled), REDIS_CHECK_SECONDS
            )
            states = dict(zip(enabled, reported, strict=True))
        except (TimeoutError, RedisError, OSError):
            pass
    result: dict[str, IntegrationState] = {}
    for adapter in adapters:
        state = states.get(adapter.service) if adapter.enabled else "disabled"
        result[adapter.service] = cast(
            IntegrationState, state if state in _KNOWN_STATES else "unknown"
        )
    return result


_KNOWN_STATES = frozenset({"disabled", "closed", "open", "half-open"})


async def readiness(
    database: Database, redis: Redis | None, adapters: Sequence[ServiceAdapter] = ()
) -> Readiness:
    database_ok, redis_ok = await asyncio.gather(_database_ok(database), _redis_ok(redis))
    return Readiness(
        status="ok" if database_ok else "unavailable",
        database="ok" if database_ok else "down",
        redis="ok" if redis_ok else "degraded",
        integrations=await _integrations(adapters, redis, redis_ok),
    )
