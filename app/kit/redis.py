"""The shared Redis client: short timeouts, because Redis is an accelerator, never a dependency."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from redis.asyncio import Redis

from app.kit import telemetry
from app.settings import Settings


def create_redis(url: str, settings: Settings) -> Redis:
    client: Redis = Redis.from_url(
        url,
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_connect_timeout=settings.redis_socket_timeout_seconds,
        max_connections=settings.redis_max_connections,
        health_check_interval=30,
        decode_responses=False,
    )
    telemetry.instrument_redis(client)
    return client


async def get_redis(request: Request) -> Redis | None:
    client: Any = getattr(request.app.state, "redis", None)
    return client if isinstance(client, Redis) else None
