"""What is owed survives Redis and the worker: it is recovered from PostgreSQL alone (issue 12).

Real PostgreSQL, a real ARQ worker (the runner that rebuilds itself when Redis goes), the fake
FCM and VideoSDK, and a redis-server of each test's own, killed with SIGKILL and restarted
empty on the same address. Pushes are counted at the fake: exactly one per owed push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, retry_key_prefix
from sqlalchemy import text

from app.integrations.fakes import FakeFcm, FakeVideoSdk
from app.kit.db import Database
from app.kit.resilience import breaker_key
from app.notifications.tasks import push_job_id
from app.settings import Settings
from tests.fixtures.app import client_for, make_settings, running_app
from tests.fixtures.redis_server import PrivateRedis
from tests.fixtures.worker import (
    Clinic,
    Visit,
    booked_pushes,
    running_worker,
    wait_for,
    wait_until_idle,
    worker_settings,
)
from tests.integration.cli.test_cli import CAREBOOK
from workers.outbox import OutboxRelay
from workers.runner import run_worker

logger = logging.getLogger("carebook.tests.recovery")

VISITS = 12
# Generous: the machine is shared and busy; the recovery itself takes seconds (measured and
# written down in docs/architecture.md).
DEADLINE = 180.0


@contextlib.asynccontextmanager
async def queue_on(redis: PrivateRedis) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis.url))
    try:
        yield pool
    finally:
        await pool.aclose()


@contextlib.asynccontextmanager
async def runner(config: Settings) -> AsyncIterator[None]:
    """`carebook worker`'s loop in this process: rebuilds the ARQ worker when Redis goes."""
    task = asyncio.create_task(run_worker(config, restart_max_seconds=1.0))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _fake(fcm: FakeFcm, path: str, body: dict[str, Any] | None = None) -> None:
    """Drive the fake over HTTP, as the issue's reproduction did."""
    async with httpx.AsyncClient(base_url=fcm.url) as http:
        response = await http.post(path, json=body or {})
        assert response.status_code == 200, response.text


async def _notification_ids(database: Database, visits: list[Visit]) -> list[str]:
    async with database.reading(primary=True) as session:
        rows = await session.scalars(
            text("SELECT id FROM notifications WHERE user_id = ANY(CAST(:users AS uuid[]))"),
            {"users": [v.patient.id for v in visits]},
        )
        return [str(row) for row in rows]


async def _unpushed(database: Database) -> int:
    async with database.reading(primary=True) as session:
        return int(
            await session.scalar(text("SELECT count(*) FROM notifications WHERE pushed_at IS NULL"))
            or 0
        )


async def _retrying_in_redis(queue: ArqRedis, notification_ids: list[str]) -> bool:
    """Every push job is in Redis and has run at least twice (its retry is what Redis holds)."""
    for notification_id in notification_ids:
        job = push_job_id(notification_id)
        if not await queue.exists(job_key_prefix + job):
            return False
        if int(await queue.get(retry_key_prefix + job) or 0) < 2:
            return False
    return True


async def _async(value: bool) -> bool:
    return value


async def test_redis_killed_while_pushes_retry_every_owed_push_is_delivered_once(
    settings: Settings,
    database: Database,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
    private_redis: PrivateRedis,
) -> None:
    # The sequence: FCM fails, 12 visits are booked, the breaker opens and the retries
    # wait in Redis; Redis is killed and restarted empty; FCM is reset.
    config = worker_settings(
        settings, video, fcm, redis_url=private_redis.url, breaker_reset_seconds=2.0
    )
    api_settings = make_settings(settings.database_url, private_redis.url)
    await _fake(fcm, "/_fake/fault", {"kind": "fail", "times": None})
    async with (
        running_app(api_settings) as api,
        client_for(api) as api_client,
        queue_on(private_redis) as queue,
        runner(config),
    ):
        visits = [await clinic.visit(api_client) for _ in range(VISITS)]
        await wait_for(
            lambda: _notification_count_is(database, visits, VISITS),
            within=DEADLINE,
            what="the feed rows",
        )
        ids = await _notification_ids(database, visits)

        async def breaker_open() -> bool:
            return bool(await queue.get(breaker_key("fcm")) == b"open")

        await wait_for(breaker_open, within=DEADLINE, what="the FCM breaker to open")
        await wait_for(
            lambda: _retrying_in_redis(queue, ids), within=DEADLINE, what="retries in Redis"
        )
        assert fcm.deliveries == []

        private_redis.kill()
        private_redis.start()
        restarted = time.monotonic()
        await _fake(fcm, "/_fake/reset")

        await wait_for(
            lambda: _async(len(fcm.deliveries) >= VISITS),
            within=DEADLINE,
            interval=0.1,
            what="the owed pushes",
        )
        recovered = time.monotonic() - restarted
        await wait_for(lambda: _nothing_unpushed(database), within=DEADLINE, what="pushed_at")
        await wait_until_idle(queue, within=DEADLINE)

    logger.info("redis restart -> %d pushes delivered in %.1f s", VISITS, recovered)
    assert [booked_pushes(fcm, v) for v in visits] == [1] * VISITS
    assert len(fcm.deliveries) == VISITS  # no other push, and none twice


async def _notification_count_is(database: Database, visits: list[Visit], count: int) -> bool:
    return len(await _notification_ids(database, visits)) == count


async def _nothing_unpushed(database: Database) -> bool:
    return await _unpushed(database) == 0


async def _outbox(database: Database) -> list[tuple[int, int, bool]]:
    async with database.reading(primary=True) as session:
        rows = await session.execute(
            text("SELECT id, attempts, processed_at IS NOT NULL AS done FROM outbox ORDER BY id")
        )
        return [(row.id, row.attempts, row.done) for row in rows]


async def _video_statuses(database: Database, visits: list[Visit]) -> list[str]:
    async with database.reading(primary=True) as session:
        rows = await session.scalars(
            text(
                "SELECT video_status FROM appointments WHERE id = ANY(CAST(:ids AS uuid[]))"
                " ORDER BY id"
            ),
            {"ids": [v.id for v in visits]},
        )
        return list(rows)


async def test_events_queued_when_redis_died_are_handed_over_again_within_seconds(
    settings: Settings,
    database: Database,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
    private_redis: PrivateRedis,
) -> None:
    # Bookings whose events the relay handed to Redis, and Redis died before a worker ran them:
    # published, never processed, and their jobs gone.
    config = worker_settings(settings, video, fcm, redis_url=private_redis.url)
    api_settings = make_settings(settings.database_url, private_redis.url)
    async with running_app(api_settings) as api, client_for(api) as api_client:
        visits = [await clinic.visit(api_client) for _ in range(VISITS)]
    async with queue_on(private_redis) as queue:
        published = await OutboxRelay(database, queue).relay_once()
        assert published >= VISITS
        private_redis.kill()
        private_redis.start()
        restarted = time.monotonic()
        async with runner(config):
            await wait_for(
                lambda: _async(all(booked_pushes(fcm, v) for v in visits)),
                within=DEADLINE,
                interval=0.1,
                what="the pushes of the lost events",
            )
            recovered = time.monotonic() - restarted

            async def rooms_ready() -> bool:
                return await _video_statuses(database, visits) == ["ready"] * VISITS

            await wait_for(rooms_ready, within=DEADLINE, what="the rooms")
            await wait_until_idle(queue, within=DEADLINE)

    logger.info("redis restart -> lost events handled, pushes delivered in %.1f s", recovered)
    events = await _outbox(database)
    assert all(done for _, _, done in events)
    assert all(attempts == 2 for _, attempts, _ in events)  # handed over once more, no more
    assert [booked_pushes(fcm, v) for v in visits] == [1] * VISITS
    assert [video.rooms_for(v.id) for v in visits] == [1] * VISITS


async def test_the_recovery_pass_never_doubles_a_push_in_flight(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    # The pass runs every second with no grace at all, while every push is slow and fails a
    # few times first: each one is queued, deferred or running whenever the pass looks.
    fcm.slow(200)
    fcm.fail_next(times=6)
    config = worker_settings(
        settings, video, fcm, recovery_interval_seconds=1, recovery_grace_seconds=0
    )
    visits = [await clinic.visit() for _ in range(VISITS)]
    async with running_worker(config):
        await wait_for(
            lambda: _async(all(booked_pushes(fcm, v) for v in visits)),
            within=DEADLINE,
            what="the pushes",
        )
        await wait_for(lambda: _nothing_unpushed(database), within=DEADLINE, what="pushed_at")
        await wait_until_idle(queue, within=DEADLINE)
    assert [booked_pushes(fcm, v) for v in visits] == [1] * VISITS
    assert len(fcm.deliveries) == VISITS


# --- a worker killed with SIGKILL ----------------------------------------------------------


async def test_a_room_cut_off_by_a_killed_worker_is_ready_a_lease_later(
    settings: Settings,
    database: Database,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
    private_redis: PrivateRedis,
) -> None:
    # `carebook worker` makes the room, VideoSDK never answers, and the process is killed: ARQ's
    # in-progress mark of the job stays behind, and no worker may run it while it lives.
    visit = await clinic.visit()
    video.hang_next(after_effect=True)
    assert settings.database_url is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBOOK_")}
    env.update(
        CAREBOOK_ENVIRONMENT="development",
        CAREBOOK_DATABASE_URL=settings.database_url,
        CAREBOOK_REDIS_URL=private_redis.url,
        CAREBOOK_VIDEOSDK_BASE_URL=video.url,
        CAREBOOK_FCM_BASE_URL=fcm.url,
        CAREBOOK_FCM_PROJECT_ID="carebook-test",
        CAREBOOK_HTTP_READ_TIMEOUT_SECONDS="60",
    )
    process = await asyncio.create_subprocess_exec(
        str(CAREBOOK),
        "worker",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for(
            lambda: _async(video.rooms_for(visit.id) == 1), within=DEADLINE, what="the room call"
        )
        # Its push done first: a push cut off mid-call is sent again (at least once), which is
        # not what this test is about.
        await wait_for(
            lambda: _async(booked_pushes(fcm, visit) == 1), within=DEADLINE, what="the push"
        )
        await wait_for(lambda: _nothing_unpushed(database), within=DEADLINE, what="pushed_at")
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    killed = time.monotonic()
    video.clear_faults()

    async with queue_on(private_redis) as queue:
        config = worker_settings(settings, video, fcm, redis_url=private_redis.url)
        async with running_worker(config):

            async def ready() -> bool:
                return await _video_statuses(database, [visit]) == ["ready"]

            await wait_for(ready, within=DEADLINE, interval=0.1, what="the room after the kill")
            recovered = time.monotonic() - killed
            await wait_until_idle(queue, within=DEADLINE)

    logger.info("worker SIGKILL -> room ready in %.1f s", recovered)
    assert len(video.calls_to("/v2/rooms")) == 2  # the cut-off call, and one re-run
    assert video.rooms_for(visit.id) == 1
    assert booked_pushes(fcm, visit) == 1
