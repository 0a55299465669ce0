"""The transactional outbox reaches the worker exactly as committed (audit F9, F10)."""

from __future__ import annotations

import asyncio
from datetime import time, timedelta

import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text

from app.kit.cache import provider_scope
from app.kit.db import Database
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, ProviderSetup, local_instant, next_local_day
from tests.fixtures.worker import run_worker_until_idle
from workers.events import handle_event, sweep_outbox
from workers.outbox import OutboxRelay, job_id


async def _outbox(database: Database) -> list[dict[str, object]]:
    async with database.reading(primary=True) as session:
        rows = await session.execute(
            text("SELECT id, topic, published_at, processed_at, attempts FROM outbox ORDER BY id")
        )
        return [dict(row._mapping) for row in rows]


async def _queued_job_ids(queue: ArqRedis) -> list[str]:
    return sorted(job.decode() for job in await queue.zrange("arq:queue", 0, -1))


async def _bookings(booking: Booking, accounts: Accounts, count: int) -> ProviderSetup:
    provider = await booking.provider(slot_minutes=15)
    day = next_local_day(provider.timezone)
    for n in range(count):
        patient = await accounts.create(Role.PATIENT)
        start = local_instant(day, time(9, 0), provider.timezone) + timedelta(minutes=15 * n)
        assert (await booking.book(patient, provider, start)).status_code == 201
    return provider


async def test_booking_event_is_relayed_and_processed_once(
    app: FastAPI,
    settings: Settings,
    database: Database,
    queue: ArqRedis,
    booking: Booking,
    accounts: Accounts,
) -> None:
    provider = await _bookings(booking, accounts, 1)
    events = [e for e in await _outbox(database) if e["topic"] == "appointment.booked"]
    assert len(events) == 1
    assert events[0]["published_at"] is None

    relay = OutboxRelay(database, queue)
    published = await relay.relay_once()
    assert published == len(await _outbox(database))  # every pending event, in one batch
    assert await relay.relay_once() == 0
    event_id = int(str(events[0]["id"]))
    assert job_id(event_id, 1) in await _queued_job_ids(queue)

    version_key = provider_scope(provider.id).version_key
    before = int(await queue.get(version_key) or 0)
    await run_worker_until_idle(settings, queue)

    processed = {e["id"]: e for e in await _outbox(database)}
    assert all(e["processed_at"] is not None for e in processed.values())
    assert all(e["attempts"] == 1 for e in processed.values())
    # The worker repeated the cache invalidation from the durable event.
    assert int(await queue.get(version_key) or 0) > before
    # At least once: a second run of the same job does nothing more.
    ctx = {"database": database, "cache": app.state.cache}
    assert await handle_event(ctx, event_id) == "already processed"


async def test_concurrent_relays_publish_each_event_once(
    database: Database, queue: ArqRedis, booking: Booking, accounts: Accounts
) -> None:
    await _bookings(booking, accounts, 12)
    pending = await _outbox(database)
    relays = [OutboxRelay(database, queue, batch_size=5) for _ in range(4)]

    async def drain(relay: OutboxRelay) -> int:
        total = 0
        while (count := await relay.relay_once()) > 0:
            total += count
        return total

    counts = await asyncio.gather(*(drain(r) for r in relays))
    assert sum(counts) == len(pending)
    jobs = await _queued_job_ids(queue)
    assert jobs == sorted(job_id(int(str(e["id"])), 1) for e in pending)
    assert all(e["published_at"] is not None for e in await _outbox(database))


async def test_redis_down_leaves_events_pending_until_it_returns(
    settings: Settings, database: Database, queue: ArqRedis, booking: Booking, accounts: Accounts
) -> None:
    await _bookings(booking, accounts, 2)
    # Nothing listens on port 1: every enqueue fails, as with Redis down.
    broken_queue = ArqRedis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        with pytest.raises(RedisConnectionError):
            await OutboxRelay(database, broken_queue).relay_once()
    finally:
        await broken_queue.aclose()
    assert all(e["published_at"] is None for e in await _outbox(database))
    # The booking itself succeeded long before; once Redis answers, nothing is lost.
    assert await OutboxRelay(database, queue).relay_once() == len(await _outbox(database))
    await run_worker_until_idle(settings, queue)
    assert all(e["processed_at"] is not None for e in await _outbox(database))


async def test_sweeper_hands_lost_deliveries_over_again(
    settings: Settings, database: Database, queue: ArqRedis, booking: Booking, accounts: Accounts
) -> None:
    await _bookings(booking, accounts, 1)
    relay = OutboxRelay(database, queue)
    await relay.relay_once()
    await queue.flushdb()  # the queue is lost (Redis restarted without persistence)
    async with database.unit_of_work() as session:
        await session.execute(
            text("UPDATE outbox SET published_at = published_at - interval '10 minutes'")
        )

    result = await sweep_outbox({"database": database})
    assert result["republished"] == len(await _outbox(database))
    assert await relay.relay_once() == result["republished"]
    # A fresh job id per attempt: ARQ would refuse a job id it still remembers.
    assert all(job.endswith(":2") for job in await _queued_job_ids(queue))
    await run_worker_until_idle(settings, queue)
    assert all(e["processed_at"] is not None for e in await _outbox(database))
    assert all(e["attempts"] == 2 for e in await _outbox(database))
