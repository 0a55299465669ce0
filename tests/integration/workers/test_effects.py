"""From booking to room and push: the worker's effects, end to end, under faults (audit F8-F10).

Real PostgreSQL, Redis and an in-process ARQ worker; VideoSDK and FCM are the fake servers on
127.0.0.1, told to fail, hang or reject. The fakes count effects per appointment (rooms by
`customRoomId`) and per feed row (pushes by `dedupe_key`), which is how "exactly once" is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pybreaker
import pytest
from arq.connections import ArqRedis
from sqlalchemy import text

from app.integrations.fakes import FakeFcm, FakeVideoSdk
from app.kit.db import Database
from app.models import Role
from app.notifications.service import reminder_key
from app.notifications.tasks import catch_up_reminders, send_reminder
from app.settings import Settings
from app.video.tasks import retry_video_rooms
from tests.fixtures.app import Account, Accounts, client_for, make_settings, running_app
from tests.fixtures.redis_proxy import running_redis_proxy
from tests.fixtures.worker import (
    Clinic,
    Visit,
    booked_pushes,
    running_worker,
    wait_for,
    wait_until_idle,
    worker_settings,
)
from workers.runner import run_worker


async def _video(client: httpx.AsyncClient, visit: Visit) -> dict[str, Any]:
    response = await client.get(f"/v1/appointments/{visit.id}/video", headers=visit.patient.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _video_status(database: Database, visit_id: str) -> tuple[str, str | None]:
    async with database.reading(primary=True) as session:
        row = (
            await session.execute(
                text("SELECT video_status, video_room_id FROM appointments WHERE id = :id"),
                {"id": visit_id},
            )
        ).one()
    return row.video_status, row.video_room_id


async def _feed(client: httpx.AsyncClient, account: Account) -> list[dict[str, Any]]:
    response = await client.get("/v1/me/notifications", headers=account.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _pushed(database: Database, visit: Visit) -> bool:
    """The patient has a feed row and every one of them is recorded as pushed."""
    async with database.reading(primary=True) as session:
        total, unpushed = (
            await session.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE pushed_at IS NULL)"
                    " FROM notifications WHERE user_id = :patient"
                ),
                {"patient": visit.patient.id},
            )
        ).one()
    return bool(total) and not unpushed


async def _room_ready(database: Database, visit: Visit) -> bool:
    return (await _video_status(database, visit.id))[0] == "ready"


# --- the happy path ------------------------------------------------------------------------------


async def test_a_booking_gets_one_room_one_push_a_feed_row_and_two_reminders(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    client: httpx.AsyncClient,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    visit = await clinic.visit()
    assert (await _video(client, visit)) == {"status": "pending", "join_url": None}

    async with running_worker(worker_settings(settings, video, fcm)):
        await wait_for(lambda: _room_ready(database, visit), what="the room")
        await wait_for(lambda: _async(booked_pushes(fcm, visit) == 1), what="the push")
        await wait_until_idle(queue)

    assert video.rooms_for(visit.id) == 1
    body = await _video(client, visit)
    assert body["status"] == "ready"
    room = video.room_by_custom_id(visit.id)
    assert room is not None
    assert body["join_url"].endswith(room.room_id)
    assert booked_pushes(fcm, visit) == 1
    (item,) = await _feed(client, visit.patient)
    assert (item["kind"], item["title"]) == ("booked", "Appointment confirmed")
    assert item["data"]["appointment_id"] == visit.id
    # Reminders wait in the queue, deferred to 24 h and 1 h before the visit.
    scores = dict(await queue.zrange("arq:queue", 0, -1, withscores=True))
    for lead in (1440, 60):
        key = reminder_key(visit.id, lead, visit.start).encode()
        due = visit.start - timedelta(minutes=lead)
        assert scores[key] == pytest.approx(due.timestamp() * 1000, abs=1000)


async def _async(value: bool) -> bool:
    return value


# --- VideoSDK down ---------------------------------------------------------------------------


async def test_videosdk_down_booking_succeeds_and_the_room_follows_its_return(
    settings: Settings,
    database: Database,
    client: httpx.AsyncClient,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    video.fail_next(times=None)  # every call answers 503 until cleared
    visits = [await clinic.visit() for _ in range(3)]
    assert video.calls == []  # the request path never waits for VideoSDK

    transitions: list[str] = []

    class Recorder(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            transitions.append(new_state.name)

    config = worker_settings(settings, video, fcm)
    api_settings = make_settings(
        settings.database_url, settings.redis_url, videosdk_base_url=video.url
    )
    async with (
        running_app(api_settings) as api,
        client_for(api) as api_client,
        running_worker(config) as worker,
    ):
        worker.ctx["videosdk"].http.breaker.add_listener(Recorder())

        async def ready_reports(state: str) -> bool:
            response = await api_client.get("/health/ready")
            return bool(response.json()["integrations"]["videosdk"] == state)

        await wait_for(lambda: _async("open" in transitions), what="the breaker to open")
        await wait_for(lambda: ready_reports("open"), what="/health/ready to show it open")
        for visit in visits:
            assert (await _video(client, visit))["status"] == "pending"

        video.clear_faults()  # VideoSDK is back
        for visit in visits:
            await wait_for(lambda v=visit: _room_ready(database, v), what="the rooms")  # type: ignore[misc]
        await wait_for(lambda: ready_reports("closed"), what="/health/ready to show it closed")

    assert transitions.index("open") < len(transitions) - 1
    assert transitions[-1] == "closed"
    assert all(video.rooms_for(v.id) == 1 for v in visits)


# --- Redis down while booking ------------------------------------------------------------------


async def test_redis_down_during_50_bookings_every_one_gets_one_push_and_one_room(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    assert settings.redis_url is not None
    async with running_redis_proxy(settings.redis_url) as proxy:
        api_settings = make_settings(settings.database_url, proxy.url)
        config = worker_settings(settings, video, fcm, redis_url=proxy.url)
        clinic.provider = await clinic.booking.provider(slot_minutes=15)
        async with running_app(api_settings) as api, client_for(api) as api_client:
            worker = asyncio.create_task(run_worker(config, restart_max_seconds=1.0))
            try:
                await wait_for(lambda: _async(proxy.forwarded > 0), what="the worker")
                await proxy.set_mode("refuse")  # Redis goes down for the API and the worker
                visits = [await clinic.visit(api_client) for _ in range(50)]
                assert video.calls == []
                assert fcm.calls == []
                await proxy.set_mode("forward")  # and comes back
                for visit in visits:
                    await wait_for(lambda v=visit: _room_ready(database, v), what="the rooms")  # type: ignore[misc]
                    await wait_for(
                        lambda v=visit: _async(booked_pushes(fcm, v) >= 1),  # type: ignore[misc]
                        what="the pushes",
                    )
                await wait_until_idle(queue)
            finally:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

    assert [video.rooms_for(v.id) for v in visits] == [1] * 50
    assert [booked_pushes(fcm, v) for v in visits] == [1] * 50


# --- a worker killed mid-job ---------------------------------------------------------------------


async def test_a_worker_killed_mid_job_reruns_it_and_the_room_is_made_once(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    visit = await clinic.visit()
    # VideoSDK makes the room and then never answers: the job is stuck in its call.
    video.hang_next(after_effect=True)
    config = worker_settings(settings, video, fcm, http_read_timeout_seconds=30.0)
    async with running_worker(config):
        await wait_for(lambda: _async(video.rooms_for(visit.id) == 1), what="the room call")
        # The push runs beside the room job; stopping the worker while FCM has accepted it but
        # before `pushed_at` commits would send it again (pushes are at least once), which is
        # not what this test is about.
        await wait_for(lambda: _pushed(database, visit), what="the push to be recorded")
    # The worker is gone (its job cancelled mid-call); the job was not finished.
    assert await _video_status(database, visit.id) == ("pending", None)
    video.clear_faults()

    async with running_worker(config):
        await wait_for(lambda: _room_ready(database, visit), what="the re-run")
        await wait_until_idle(queue)

    assert len(video.calls_to("/v2/rooms")) == 2  # the call ran twice ...
    assert video.rooms_for(visit.id) == 1  # ... the effect happened once
    assert booked_pushes(fcm, visit) == 1


# --- compensation: cancel and reschedule ---------------------------------------------------------


async def test_cancel_deletes_the_room_and_its_reminders_send_nothing(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    client: httpx.AsyncClient,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    visit = await clinic.visit()
    async with running_worker(worker_settings(settings, video, fcm)) as worker:
        await wait_for(lambda: _room_ready(database, visit), what="the room")
        response = await client.post(
            f"/v1/appointments/{visit.id}/cancel",
            json={"reason": "feeling better"},
            headers=visit.patient.headers,
        )
        assert response.status_code == 200, response.text
        await wait_for(
            lambda: _video_status_is(database, visit, ("not_required", None)),
            what="the room deletion",
        )
        await wait_until_idle(queue)
        # The reminders' deferred jobs run when their time comes; here, now.
        for lead in (1440, 60):
            outcome = await send_reminder(worker.ctx, visit.id, lead, visit.start.isoformat())
            assert outcome == "skipped: appointment cancelled"

    room = video.room_by_custom_id(visit.id)
    assert room is not None
    assert room.disabled
    assert room.deactivations == 1
    assert (await _video(client, visit)) == {"status": "not_required", "join_url": None}
    kinds = [d.data["kind"] for d in fcm.deliveries if d.token == visit.device]
    assert sorted(kinds) == ["booked", "cancelled"]
    assert sorted(n["kind"] for n in await _feed(client, visit.patient)) == ["booked", "cancelled"]


async def _video_status_is(database: Database, visit: Visit, expected: tuple[str, None]) -> bool:
    return await _video_status(database, visit.id) == expected


async def test_reschedule_moves_the_reminders_to_the_new_time(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    client: httpx.AsyncClient,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    visit = await clinic.visit()
    new_start = visit.start + timedelta(hours=2)
    async with running_worker(worker_settings(settings, video, fcm)) as worker:
        await wait_for(lambda: _room_ready(database, visit), what="the room")
        response = await client.post(
            f"/v1/appointments/{visit.id}/reschedule",
            json={"start": new_start.isoformat()},
            headers={**visit.patient.headers, "Idempotency-Key": clinic.booking.key()},
        )
        assert response.status_code == 200, response.text
        await wait_for(
            lambda: _async(any(d.data.get("kind") == "rescheduled" for d in fcm.deliveries)),
            what="the move's push",
        )
        await wait_until_idle(queue)

        queued = {job.decode() for job in await queue.zrange("arq:queue", 0, -1)}
        for lead in (1440, 60):
            assert reminder_key(visit.id, lead, new_start) in queued
            old = await send_reminder(worker.ctx, visit.id, lead, visit.start.isoformat())
            assert old == "skipped: appointment moved"
        # The reminder writes its feed row and plans its push under the push's own job id:
        # run twice, it plans one push.
        for _ in range(2):
            planned = await send_reminder(worker.ctx, visit.id, 60, new_start.isoformat())
            assert planned == "push planned"
        await wait_for(
            lambda: _async(any(d.data.get("kind") == "reminder" for d in fcm.deliveries)),
            what="the reminder's push",
        )
        await wait_until_idle(queue)

    reminders = [d for d in fcm.deliveries if d.data.get("kind") == "reminder"]
    assert len(reminders) == 1
    assert reminders[0].data["lead_minutes"] == "60"
    assert video.rooms_for(visit.id) == 1  # a room is not tied to a time: it stays


async def test_catch_up_sends_reminders_missed_while_no_worker_ran_once(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    soon, tonight = await clinic.visit(), await clinic.visit()
    now = datetime.now(UTC)
    # Booked days ago; now 30 minutes and 10 hours away: the 1 h and the 24 h reminders were due
    # while nothing ran, and their deferred jobs were lost (the queue is empty).
    async with database.unit_of_work() as session:
        for visit, start in (
            (soon, now + timedelta(minutes=30)),
            (tonight, now + timedelta(hours=10)),
        ):
            visit.start = start.replace(microsecond=0)
            await session.execute(
                text(
                    "UPDATE appointments SET starts_at = CAST(:start AS timestamptz),"
                    " ends_at = CAST(:start AS timestamptz) + interval '15 minutes',"
                    " created_at = now() - interval '3 days' WHERE id = :id"
                ),
                {"start": visit.start, "id": visit.id},
            )
    async with running_worker(worker_settings(settings, video, fcm)) as worker:
        await wait_until_idle(queue)  # the cron runs at startup
        await wait_for(
            lambda: _async(sum(d.data.get("kind") == "reminder" for d in fcm.deliveries) == 2),
            what="the reminders",
        )
        assert await catch_up_reminders(worker.ctx) == 0  # nothing is sent twice

    leads = {
        d.token: d.data["lead_minutes"] for d in fcm.deliveries if d.data.get("kind") == "reminder"
    }
    assert leads == {soon.device: "60", tonight.device: "1440"}


# --- retries: transient and permanent failures --------------------------------------------------


async def test_5xx_then_success_makes_one_room(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    visit = await clinic.visit()
    video.fail_next(times=3)  # more than one job run's HTTP attempts: the job retries too
    async with running_worker(worker_settings(settings, video, fcm)):
        await wait_for(lambda: _room_ready(database, visit), what="the room")
        await wait_until_idle(queue)
    assert len(video.calls_to("/v2/rooms")) == 4
    assert video.rooms_for(visit.id) == 1


async def test_400_is_not_retried_marks_the_room_failed_and_alerts_the_clinic_staff(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    client: httpx.AsyncClient,
    accounts: Accounts,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    visit = await clinic.visit()
    assert clinic.provider is not None
    staff = await accounts.create(Role.STAFF, clinic_id=clinic.provider.clinic_id)
    other_clinic = await clinic.booking.clinic(name="Elsewhere")
    outsider = await accounts.create(Role.STAFF, clinic_id=other_clinic)
    video.reject_next(400)
    async with running_worker(worker_settings(settings, video, fcm)) as worker:
        await wait_for(lambda: _video_status_is_failed(database, visit), what="failed")
        await wait_until_idle(queue)
        assert len(video.calls_to("/v2/rooms")) == 1  # never retried
        assert (await _video(client, visit)) == {"status": "failed", "join_url": None}
        (alert,) = await _feed(client, staff)
        assert alert["kind"] == "video_failed"
        assert alert["data"]["appointment_id"] == visit.id
        assert await _feed(client, outsider) == []
        assert not any(d.data.get("kind") == "video_failed" for d in fcm.deliveries)

        # Later the retry cron picks the failed room up again, and VideoSDK takes it.
        async with database.unit_of_work() as session:
            await session.execute(
                text("UPDATE appointments SET created_at = now() - interval '1 hour'")
            )
        assert await retry_video_rooms(worker.ctx) == 1
        await wait_for(lambda: _room_ready(database, visit), what="the recovery")
    assert video.rooms_for(visit.id) == 1


async def _video_status_is_failed(database: Database, visit: Visit) -> bool:
    return (await _video_status(database, visit.id))[0] == "failed"


async def test_retries_exhausted_mark_the_room_failed(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    visit = await clinic.visit()
    video.fail_next(times=None)
    config = worker_settings(settings, video, fcm, job_max_tries=3, breaker_fail_max=100)
    async with running_worker(config):
        await wait_for(lambda: _video_status_is_failed(database, visit), what="failed")
        await wait_until_idle(queue)
    # 3 job runs of 2 HTTP attempts each, then it stopped.
    assert len(video.calls_to("/v2/rooms")) == 6


# --- devices FCM no longer knows --------------------------------------------------------------


async def test_an_unregistered_token_is_removed_and_the_feed_keeps_the_message(
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    client: httpx.AsyncClient,
    clinic: Clinic,
    video: FakeVideoSdk,
    fcm: FakeFcm,
) -> None:
    visit = await clinic.visit()
    second = {"token": f"tablet-{visit.patient.id}", "platform": "ios"}
    response = await client.post("/v1/me/devices", json=second, headers=visit.patient.headers)
    assert response.status_code == 201
    fcm.unregister(visit.device)  # the app was uninstalled from the phone
    async with running_worker(worker_settings(settings, video, fcm)):
        await wait_for(lambda: _async(fcm.pushes(second["token"]) == 1), what="the push")
        await wait_until_idle(queue)

    async with database.reading(primary=True) as session:
        tokens = (
            await session.scalars(
                text("SELECT token FROM devices WHERE user_id = :id"), {"id": visit.patient.id}
            )
        ).all()
    assert tokens == [second["token"]]
    assert [n["kind"] for n in await _feed(client, visit.patient)] == ["booked"]


async def test_a_worker_stopped_while_a_job_finishes_still_runs_its_shutdown_hook(
    settings: Settings, database: Database, video: FakeVideoSdk, fcm: FakeFcm
) -> None:
    # A job cancelled inside ARQ's shielded finish step ends in CancelledError, and ARQ's own
    # close() then raises before its shutdown hook: the outbox relay would go on polling and
    # claim every later event of this process.
    async with running_worker(worker_settings(settings, video, fcm)) as worker:
        relay: asyncio.Task[None] = worker.ctx["relay_task"]
        worker.tasks["finishing"] = asyncio.create_task(asyncio.Event().wait())
    assert relay.done()
