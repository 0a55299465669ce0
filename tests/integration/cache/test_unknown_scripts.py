"""The cache's Lua scripts run by EVALSHA; a Redis that does not know one yet (restarted, or
its scripts flushed) gets it loaded and run, with no miss, no error and no circuit failure."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from app.kit import cache as cache_module
from app.kit.cache import Cache
from tests.fixtures.booking import Booking, next_local_day
from tests.fixtures.cache import CacheCounts


async def test_scripts_redis_does_not_know_are_loaded_and_run(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache: Cache = app.state.cache
    redis: Redis = app.state.redis
    provider = await booking.provider()
    day = next_local_day(provider.timezone)
    url = f"/v1/providers/{provider.id}/availability"
    params = {"from": day.isoformat(), "to": day.isoformat()}
    counts = CacheCounts()
    failures = counts.failures

    # Texts no Redis has seen (without flushing the scripts other users of this server rely
    # on): each script's first EVALSHA fails with NOSCRIPT.
    def unknown(text: str) -> object:
        return redis.register_script(f"{text}\n-- {uuid.uuid4()}")

    # The app is the session's: the attributes are restored after the test.
    monkeypatch.setattr(cache, "_claim_script", unknown(cache_module._CLAIM))
    monkeypatch.setattr(cache, "_lookup", unknown(cache_module._LOOKUP))
    misses = counts.misses.get("availability", 0)
    first = await client.get(url, params=params)
    assert first.status_code == 200, first.text
    assert counts.misses.get("availability", 0) == misses + 1

    monkeypatch.setattr(cache, "_lookup", unknown(cache_module._LOOKUP))
    hits = counts.hits.get("availability", 0)
    second = await client.get(url, params=params)
    assert second.status_code == 200, second.text
    assert second.content == first.content
    assert counts.hits.get("availability", 0) == hits + 1
    assert counts.failures == failures
