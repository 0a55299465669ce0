"""The shared Redis client: short timeouts, because Redis is an accelerator, never a dependency."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, cast

from fastapi import Request
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from app.kit import telemetry
from app.settings import Settings


class PoolExhausted(RedisConnectionError):
    """Every pooled connection stayed busy for the whole pool wait: back-pressure from this
    process, not a sign that Redis is down, so no circuit counts it as a failure."""


class WaitingPool(BlockingConnectionPool):
    """A blocking pool whose exhaustion is told apart from an unreachable server.

    While a connection is free and nobody waits for one, it is taken and given back without the
    pool's condition and timeout: one event loop, nothing awaited between the check and the
    take, so the lock guards nothing then, and it was half of what the pool cost a command.
    Once callers wait, every checkout and return goes through the condition, in order."""

    _waiting = 0  # callers inside the blocking checkout

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._available_connections and not self._waiting:
            connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection
        self._waiting += 1
        try:
            connection = await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            # The only ConnectionError the pool raises from a timeout is its wait running out;
            # a server that cannot be reached fails later, in ensure_connection.
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhausted("No pooled Redis connection became free in time.") from exc
            raise
        finally:
            self._waiting -= 1
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        if self._waiting:
            await super().release(connection)  # under the condition, waking a waiter
        else:
            await ConnectionPool.release(self, connection)


async def run_script(script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
    """A registered Lua script, by EVALSHA straight away; loaded and run again only when Redis
    does not know it (restarted or flushed). redis-py's `AsyncScript.__call__` does the same
    after an `isinstance` check against a typing Protocol that costs more than the call itself
    on a cache hit (7 % of a warm availability request's samples)."""
    try:
        reply = script.registered_client.evalsha(script.sha, len(keys), *keys, *args)
        return await cast("Awaitable[Any]", reply)  # the asyncio client's commands are awaitable
    except NoScriptError:
        return await script(keys=keys, args=args)


def create_redis(url: str, settings: Settings) -> Redis:
    # A blocking pool: with every connection in use, a caller waits (up to the pool wait) for
    # one to come back. The default pool raises ConnectionError at once, which the cache's
    # circuit took for an outage under load, bumping the generation and emptying the cache.
    pool = WaitingPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_seconds,
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
