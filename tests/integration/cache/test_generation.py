"""Redis coming back bumps the cache generation once per process, not once per caller, and a
busy connection pool is waited for rather than taken for an outage (found by the load runner:
with 64 clients both emptied the cache over and over)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from app.kit.cache import GENERATION_KEY, Cache, provider_scope
from app.kit.db import Database
from app.kit.redis import create_redis
from app.settings import Settings


async def _value() -> bytes:
    return b"computed"


async def test_many_callers_finding_redis_back_bump_the_generation_once(
    settings: Settings, database: Database
) -> None:
    assert settings.redis_url is not None
    redis = create_redis(settings.redis_url, settings)
    try:
        cache = Cache(redis)
        before = int(await redis.get(GENERATION_KEY) or 0)
        cache._suspect_stale = True  # as after a failed bump or an outage
        results = await asyncio.gather(
            *(
                cache.get_or_compute(
                    "availability", provider_scope(f"p{i}"), "k", _value, ttl_seconds=60
                )
                for i in range(50)
            )
        )
        assert set(results) == {b"computed"}
        assert int(await redis.get(GENERATION_KEY) or 0) == before + 1
    finally:
        await redis.aclose()


async def test_an_exhausted_pool_is_waited_for_not_an_outage(
    settings: Settings, database: Database
) -> None:
    assert settings.redis_url is not None
    tight = settings.model_copy(update={"redis_max_connections": 2})
    redis: Redis = create_redis(settings.redis_url, tight)
    try:
        cache = Cache(redis)
        await asyncio.gather(
            *(
                cache.get_or_compute(
                    "availability", provider_scope(f"q{i}"), "k", _value, ttl_seconds=60
                )
                for i in range(300)
            )
        )
        assert not cache.circuit.is_open
        assert cache.circuit.outages == 0
    finally:
        await redis.aclose()
