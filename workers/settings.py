"""ARQ worker configuration. Jobs are registered here; their code lives in each domain's tasks.py.

ARQ runs a job at least once, so every job takes ids, re-reads its rows and is safe to run twice.
"""

from __future__ import annotations

from typing import Any

from arq import cron
from arq.connections import RedisSettings

from app.auth.tasks import purge_refresh_tokens
from app.kit.db import Database
from app.settings import Settings, get_settings


def _startup_for(settings: Settings) -> Any:
    async def startup(ctx: dict[str, Any]) -> None:
        if settings.database_url is None:
            raise RuntimeError("the worker needs CAREBOOK_DATABASE_URL")
        ctx["settings"] = settings
        ctx["database"] = Database.connect(settings, settings.database_url)

    return startup


async def shutdown(ctx: dict[str, Any]) -> None:
    database: Database | None = ctx.get("database")
    if database is not None:
        await database.dispose()


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker`, shared by `carebook worker` and the in-process runner."""
    if settings.redis_url is None:
        raise RuntimeError("the worker needs CAREBOOK_REDIS_URL")
    return {
        "functions": [purge_refresh_tokens],
        "cron_jobs": [cron(purge_refresh_tokens, hour={3}, minute={17}, run_at_startup=False)],
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "on_startup": _startup_for(settings),
        "on_shutdown": shutdown,
        # Kubernetes' liveness probe reads this key; ARQ's default refreshes it only hourly.
        "health_check_interval": settings.worker_health_check_interval_seconds,
        "max_jobs": 20,
        "job_timeout": 60,
        "keep_result": 3600,
    }


class WorkerSettings:
    """For `arq workers.settings.WorkerSettings`; `carebook worker` is the usual way in."""

    _options = worker_options(get_settings()) if get_settings().redis_url else {}
    functions = _options.get("functions", [])
    cron_jobs = _options.get("cron_jobs", [])
    redis_settings = _options.get("redis_settings")
    on_startup = _options.get("on_startup")
    on_shutdown = _options.get("on_shutdown")
    health_check_interval = _options.get("health_check_interval", 30)
