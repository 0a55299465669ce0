"""The shared Redis client: short timeouts, because Redis is an accelerator, never a dependency."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from redis.asyncio import BlockingConnectionPool, Redis

from app.kit import telemetry
from app.settings import Settings


def create_redis(url: str, settings: Settings) -> Redis:
    # A blocking pool: with every connection in use, a caller waits (at most the socket timeout)
    # for one to come back. The default pool raises ConnectionError at once, which the cache's
    # circuit took for an outage under load, bumping the generation and emptying the cache.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_socket_timeout_seconds,
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_connect_timeout=settings.redis_socket_timeout_seconds,
        health_check_interval=30,
        decode_responses=False,
    )
    client: Redis = Redis.from_pool(pool)
    telemetry.instrument_redis(client)
    return client


async def get_redis(request: Request) -> Redis | None:
    client: Any = getattr(request.app.state, "redis", None)
    return client if isinstance(client, Redis) else None
