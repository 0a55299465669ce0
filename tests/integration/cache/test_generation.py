"""Redis coming back bumps the cache generation once per process, not once per caller, and a
busy connection pool is waited for rather than taken for an outage (found by the load runner:
with 64 clients both emptied the cache over and over)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from redis.asyncio import Redis

from app.kit.cache import GENERATION_KEY, Cache, RedisCircuit, provider_scope
from app.kit.db import Database
from app.kit.redis import PoolExhausted, create_redis
from app.settings import Settings
from tests.fixtures.cache import CacheCounts
from tests.fixtures.redis_proxy import Mode, running_redis_proxy


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


async def test_a_tight_pool_serves_every_caller_on_its_own_connections(
    settings: Settings, database: Database
) -> None:
    assert settings.redis_url is not None
    tight = settings.model_copy(update={"redis_max_connections": 2})
    redis: Redis = create_redis(settings.redis_url, tight)
    pool = redis.connection_pool
    key = f"cb:test:pool:{uuid.uuid4()}"
    try:
        assert await redis.incr(key) == 1  # alone: a free connection, taken without waiting
        counts = await asyncio.gather(*(redis.incr(key) for _ in range(300)))
        assert sorted(counts) == list(range(2, 302))  # each command ran once, none was lost
        assert len(pool._available_connections) == 2
        assert not pool._in_use_connections
        assert await redis.get(key) == b"301"  # and the pool still works once it is calm
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_a_pool_that_stays_busy_is_not_counted_against_the_circuit(
    settings: Settings, database: Database
) -> None:
    assert settings.redis_url is not None
    one = settings.model_copy(update={"redis_max_connections": 1, "redis_pool_wait_seconds": 0.01})
    redis: Redis = create_redis(settings.redis_url, one)
    held = await redis.connection_pool.get_connection()  # the only connection, kept busy
    try:
        cache = Cache(redis)
        counts = CacheCounts()
        for i in range(cache.circuit.threshold * 3):
            value = await cache.get_or_compute(
                "availability", provider_scope(f"busy{i}"), "k", _value, ttl_seconds=60
            )
            assert value == b"computed"  # served from the computation, as without Redis
        assert counts.exhaustions >= cache.circuit.threshold * 3
        assert cache.circuit.outages == 0
        assert not cache.circuit.is_open
        assert not cache._suspect_stale  # nothing was missed: no generation bump follows
    finally:
        await redis.connection_pool.release(held)
        await redis.aclose()


async def test_a_bump_that_never_gets_a_connection_is_made_good_by_the_generation(
    settings: Settings, database: Database
) -> None:
    assert settings.redis_url is not None
    one = settings.model_copy(update={"redis_max_connections": 1, "redis_pool_wait_seconds": 0.01})
    redis: Redis = create_redis(settings.redis_url, one)
    held = await redis.connection_pool.get_connection()
    try:
        cache = Cache(redis)
        await cache.bump(provider_scope("busy"))
        assert cache._suspect_stale  # the bump may be lost: the next contact bumps the generation
        assert cache.circuit.outages == 0
    finally:
        await redis.connection_pool.release(held)
        await redis.aclose()


async def test_failure_warnings_are_throttled(caplog: pytest.LogCaptureFixture) -> None:
    circuit = RedisCircuit(threshold=1_000)
    counts = CacheCounts()
    with caplog.at_level(logging.WARNING, logger="carebook.cache"):
        for _ in range(200):
            circuit.failed(PoolExhausted("busy"), "cache lookup")
            circuit.failed(TimeoutError(), "cache lookup")
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("cache lookup: the Redis pool stayed busy") == 1
    assert messages.count("cache lookup") == 1
    assert counts.exhaustions == 200


@pytest.mark.parametrize(("mode", "attempts"), [("hang", 3), ("refuse", 1)])
async def test_a_bump_retries_timeouts_but_not_a_refusal(
    settings: Settings, database: Database, mode: Mode, attempts: int
) -> None:
    """A timeout with the circuit closed is likelier a starved machine than an outage, and a
    lost bump costs every process a stale value: it is tried again. A refusal is an outage."""
    assert settings.redis_url is not None
    async with running_redis_proxy(settings.redis_url) as proxy:
        redis = create_redis(proxy.url, settings)
        try:
            cache = Cache(redis)
            counts = CacheCounts()
            await proxy.set_mode(mode)
            await cache.bump(provider_scope("unlucky"))
            assert counts.failures == attempts
            assert cache._suspect_stale
        finally:
            await redis.aclose()
