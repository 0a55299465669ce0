"""One Carebook layer per request (issue 13): the request context, per-IP limit and compression
are a single ASGI middleware, and the limit (EVALSHA first) still works when Redis does not
know its script."""

from __future__ import annotations

import uuid

import httpx
from redis.asyncio import Redis

from app.kit.middleware import RequestContextMiddleware
from app.kit.rate_limit import _GCRA, RateLimiter
from app.settings import Settings
from tests.fixtures.app import make_settings, running_app


async def test_the_app_stacks_one_middleware_of_its_own(settings: Settings) -> None:
    configured = make_settings(settings.database_url, settings.redis_url, rate_limit_enabled=True)
    async with running_app(configured) as app:
        layers: list[object] = [entry.cls for entry in app.user_middleware]
        assert layers == [RequestContextMiddleware]


async def test_the_per_ip_limit_runs_a_script_redis_does_not_know_yet(settings: Settings) -> None:
    configured = make_settings(
        settings.database_url,
        settings.redis_url,
        rate_limit_enabled=True,
        rate_limit_ip_burst=5,
        rate_limit_ip_per_second=0.01,
    )
    address = f"10.{uuid.uuid4().int % 250 + 1}.{uuid.uuid4().int % 250 + 1}.7"
    async with running_app(configured) as app:
        redis: Redis = app.state.redis
        limiter: RateLimiter = app.state.rate_limiter
        transport = httpx.ASGITransport(app=app, client=(address, 40_000))
        async with httpx.AsyncClient(transport=transport, base_url="http://carebook.test") as c:
            remaining = []
            for index in range(6):
                if index in (0, 3):
                    # A script text no Redis has seen (as after a restart, without flushing
                    # the scripts other users of this server rely on): EVALSHA fails once.
                    fresh = f"{_GCRA}\n-- {uuid.uuid4()}"
                    limiter._script = redis.register_script(fresh)
                response = await c.get("/v1/specialties")
                if index < 5:
                    assert response.status_code == 200, response.text
                    remaining.append(int(response.headers["ratelimit-remaining"]))
                else:
                    assert response.status_code == 429, response.text
        # Counted in Redis, not by the per-process fallback.
        assert await redis.exists(f"cb:rl:ip:{address}")
    assert remaining == [4, 3, 2, 1, 0]
