"""ARQ worker configuration. Jobs are registered here; their code lives in each domain's tasks.py.

ARQ runs a job at least once, so every job takes ids, re-reads its rows and is safe to run twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq import cron, func
from arq.connections import RedisSettings

from app import invalidation
from app.analytics.tasks import REBUILD_TIMEOUT_SECONDS, rebuild_clinic_stats
from app.auth.tasks import purge_refresh_tokens
from app.integrations.fcm import Fcm
from app.integrations.videosdk import VideoSdk
from app.kit import telemetry
from app.kit.cache import Cache
from app.kit.cancellation import stop_task
from app.kit.db import Database
from app.kit.resilience import ServiceAdapter
from app.notifications.tasks import catch_up_reminders, deliver_notification, send_reminder
from app.settings import Settings, get_settings
from app.video.tasks import RECONCILE_EVERY_MINUTES, retry_video_rooms, sync_video_room
from workers.events import expire_idempotency_keys, handle_event, sweep_outbox
from workers.health import health_check_key
from workers.leases import Leases, job_started
from workers.outbox import OutboxRelay
from workers.recovery import recover_owed_work
from workers.telemetry import instrumented

CALLING_OUT_TIMEOUT_SECONDS = 300


def _startup_for(settings: Settings, *, relay: bool) -> Any:
    async def startup(ctx: dict[str, Any]) -> None:
        if settings.database_url is None:
            raise RuntimeError("the worker needs CAREBOOK_DATABASE_URL")
        ctx["settings"] = settings
        telemetry.setup(settings)
        telemetry.instrument_redis(ctx["redis"])
        ctx["database"] = Database.connect(settings, settings.database_url)
        # ARQ's own connection is a redis.asyncio client.
        ctx["cache"] = Cache(ctx["redis"], staleness=invalidation.STALENESS)
        for name, adapter in (("videosdk", VideoSdk(settings)), ("fcm", Fcm(settings))):
            adapter.publish_breaker_state(ctx["redis"])
            ctx[name] = adapter
        # The recovery pass's cursors live as long as this worker (jobs get copies of ctx).
        ctx["recovery_cursors"] = {}
        leases = Leases(ctx["redis"], settings.job_lease_seconds)
        ctx["leases"] = leases
        ctx["lease_task"] = asyncio.create_task(leases.run(), name="job-leases")
        if relay:
            outbox_relay = OutboxRelay(ctx["database"], ctx["redis"])
            ctx["relay_task"] = asyncio.create_task(outbox_relay.run(), name="outbox-relay")

    return startup


async def shutdown(ctx: dict[str, Any]) -> None:
    for name in ("relay_task", "lease_task"):
        task: asyncio.Task[None] | None = ctx.get(name)
        if task is not None:
            await stop_task(task)  # a plain cancel can be swallowed by a client mid-call
    for name in ("videosdk", "fcm"):
        adapter: ServiceAdapter | None = ctx.get(name)
        if adapter is not None:
            await adapter.aclose()
    database: Database | None = ctx.get("database")
    if database is not None:
        await database.dispose()


def worker_options(settings: Settings, *, relay: bool = True) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker`, shared by `carebook worker` and the in-process runner.

    Every worker also runs an outbox relay; several relays cooperate (SKIP LOCKED)."""
    if settings.redis_url is None:
        raise RuntimeError("the worker needs CAREBOOK_REDIS_URL")
    # Jobs that call a third party give up (and record it) on their own last try.
    # Every job and cron is counted, timed and traced (workers.telemetry).
    calling_out = [
        # A push goes to each device in turn, each call bounded by the HTTP timeouts and retries.
        func(
            instrumented(job), max_tries=settings.job_max_tries, timeout=CALLING_OUT_TIMEOUT_SECONDS
        )
        for job in (sync_video_room, deliver_notification, send_reminder)
    ]
    every_five_minutes = set(range(0, 60, RECONCILE_EVERY_MINUTES))
    return {
        "functions": [
            instrumented(job)
            for job in (
                handle_event,
                purge_refresh_tokens,
                sweep_outbox,
                recover_owed_work,
                expire_idempotency_keys,
                catch_up_reminders,
                retry_video_rooms,
            )
        ]
        + calling_out
        + [func(instrumented(rebuild_clinic_stats), timeout=REBUILD_TIMEOUT_SECONDS)],
        "cron_jobs": [
            cron(instrumented(sweep_outbox), second={7}, run_at_startup=True),
            # What Redis lost, planned again within seconds of its return (workers/recovery.py);
            # a rebuilt worker (Redis was back) runs it at once.
            cron(
                instrumented(recover_owed_work),
                second=set(range(0, 60, settings.recovery_interval_seconds)),
                run_at_startup=True,
            ),
            cron(instrumented(expire_idempotency_keys), minute={23}),
            cron(instrumented(purge_refresh_tokens), hour={3}, minute={17}),
            # Both also run at startup: that is when downtime has left work behind. A reminder
            # lost with Redis is sent at most a minute after it falls due.
            cron(instrumented(catch_up_reminders), second={37}, run_at_startup=True),
            cron(
                instrumented(retry_video_rooms),
                minute=every_five_minutes,
                second={47},
                run_at_startup=True,
            ),
            # Repairs clinic_daily_stats from appointments (the events keep it current).
            cron(
                instrumented(rebuild_clinic_stats),
                hour={2},
                minute={41},
                timeout=REBUILD_TIMEOUT_SECONDS,
            ),
        ],
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "on_startup": _startup_for(settings, relay=relay),
        "on_shutdown": shutdown,
        # Kubernetes' liveness probe reads this key; ARQ's default refreshes it only hourly.
        "health_check_interval": settings.worker_health_check_interval_seconds,
        # One key per host, so a worker's liveness probe is about that worker (workers/health.py).
        "health_check_key": health_check_key(),
        # A running job holds a short lease instead of ARQ's long in-progress mark
        # (workers/leases.py), so a killed worker's jobs run again within seconds.
        "on_job_start": job_started,
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
    on_job_start = _options.get("on_job_start")
    health_check_interval = _options.get("health_check_interval", 30)
    health_check_key = _options.get("health_check_key")
