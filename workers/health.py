"""The worker's liveness check (`carebook worker --check`), kept light: a probe runs it often,
inside the worker's container and its memory limit, so it imports no domain code."""

from __future__ import annotations

import dataclasses
import logging
import socket

from arq.connections import RedisSettings
from arq.constants import default_queue_name, health_check_key_suffix
from arq.worker import async_check_health
from redis.exceptions import RedisError

from app.settings import Settings

logger = logging.getLogger("carebook.worker")

# A probe must answer within its own timeout: one quick connection attempt, no ARQ retries.
CHECK_CONNECT_TIMEOUT_SECONDS = 2


def health_check_key(hostname: str | None = None) -> str:
    """This host's ARQ health-check key (a pod's hostname is its name).

    ARQ's default is one key per queue that every worker refreshes, so a probe reading it would
    pass while any one worker lives; a key per host makes the check about the worker beside it.
    """
    return f"{default_queue_name}{health_check_key_suffix}:{hostname or socket.gethostname()}"


async def check_health(settings: Settings) -> bool:
    """Has the worker on this host refreshed its health-check key within
    `worker_health_check_interval_seconds` + 1 s (the key's lifetime)? ARQ's own check, on this
    host's key; an unreachable Redis counts as unhealthy."""
    if settings.redis_url is None:
        raise RuntimeError("the worker check needs CAREBOOK_REDIS_URL")
    redis_settings = dataclasses.replace(
        RedisSettings.from_dsn(settings.redis_url),
        conn_timeout=CHECK_CONNECT_TIMEOUT_SECONDS,
        conn_retries=0,
    )
    try:
        return await async_check_health(redis_settings, health_check_key()) == 0
    except (RedisError, OSError) as error:
        logger.warning("worker check: redis unreachable (%s)", type(error).__name__)
        return False
