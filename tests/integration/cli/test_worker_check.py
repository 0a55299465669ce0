"""`carebook worker --check`, the worker's liveness probe, run as a real subprocess.

It must answer 0 only while the worker on this host keeps its own health-check key fresh, 1
otherwise (no worker, a stopped one, only another host's worker, Redis unreachable), and never
print a traceback: Kubernetes shows the probe's output in the pod's events.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.kit.db import Database
from app.settings import Settings
from tests.fixtures.app import make_settings
from tests.fixtures.worker import running_worker, wait_for
from tests.integration.cli.test_cli import Result, run_cli
from workers.health import health_check_key


async def run_check(redis_url: str | None) -> Result:
    """`carebook worker --check` with only this Redis configured (no other CAREBOOK_ variable)."""
    extra = {"CAREBOOK_REDIS_URL": redis_url} if redis_url is not None else {}
    result = await run_cli("worker", "--check", database_url=None, extra_env=extra)
    assert "Traceback" not in result.output, result.describe()
    return result


@pytest.fixture
async def redis(settings: Settings, database: Database) -> AsyncIterator[Redis]:
    """The test Redis (flushed by the `database` fixture after the test)."""
    assert settings.redis_url is not None
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_check_fails_when_no_worker_ran(settings: Settings, redis: Redis) -> None:
    assert not await redis.exists(health_check_key())
    result = await run_check(settings.redis_url)
    assert result.returncode == 1, result.describe()
    assert "unhealthy" in result.output


async def test_check_passes_while_a_worker_runs_and_fails_once_its_key_expires(
    settings: Settings, redis: Redis
) -> None:
    quick = make_settings(
        settings.database_url, settings.redis_url, worker_health_check_interval_seconds=1
    )
    async with running_worker(quick, relay=False):
        await wait_for(lambda: _exists(redis, health_check_key()), what="the first heartbeat")
        result = await run_check(settings.redis_url)
        assert result.returncode == 0, result.describe()
        assert "healthy" in result.output
    # A stopped (or stuck) worker refreshes nothing: its key lives interval + 1 s, then the
    # probe fails.
    await wait_for(lambda: _missing(redis, health_check_key()), within=60, what="the key to expire")
    result = await run_check(settings.redis_url)
    assert result.returncode == 1, result.describe()


async def test_another_hosts_worker_does_not_make_this_one_healthy(
    settings: Settings, redis: Redis
) -> None:
    other = health_check_key("another-worker-pod")
    assert other != health_check_key()
    await redis.set(other, b"alive", ex=60)
    result = await run_check(settings.redis_url)
    assert result.returncode == 1, result.describe()


async def test_check_fails_cleanly_when_redis_is_unreachable() -> None:
    result = await run_check(f"redis://127.0.0.1:{_free_port()}/0")
    assert result.returncode == 1, result.describe()
    assert "unreachable" in result.output


async def test_check_needs_a_redis_url() -> None:
    result = await run_check(None)
    assert result.returncode == 1, result.describe()
    assert "CAREBOOK_REDIS_URL" in result.output


async def _exists(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))


async def _missing(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)
