"""The transactional outbox: events are rows written in the same transaction as the change.

The relay in `workers/` publishes them to the job queue after commit, so a job can never run
for a change that rolled back, and no change loses its follow-ups when Redis is down. The same
events reach this process's subscribers (cache invalidation) right after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit import sql, telemetry
from app.kit.db import AnyRow, after_commit, event_bus_of


@dataclass(frozen=True)
class Event:
    """A committed outbox event as a job sees it; `id` makes per-event effects unique."""

    id: int
    topic: str
    payload: dict[str, Any]


def announce(session: AsyncSession, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Tell this process's subscribers of the events once the transaction commits: for events
    written by the caller's own statement (`INSERT_EVENTS`); `emit_many` does it itself."""
    bus = event_bus_of(session)
    if bus is None:
        return
    announced = list(events)

    async def publish() -> None:
        await bus.publish(announced)

    after_commit(session, publish)


async def emit(session: AsyncSession, topic: str, payload: dict[str, Any]) -> None:
    await emit_many(session, [(topic, payload)])


# Any number of events in one statement, with the parameters of `event_params`. A repository
# statement that writes a change can carry it as a CTE (`WITH changed AS (...), events AS
# (INSERT_EVENTS) SELECT ...`): the change and its events in one round trip, in the same
# transaction as ever. A failed change fails the statement, events and all; a change that may
# touch no row adds `WHERE EXISTS (SELECT FROM changed)`.
INSERT_EVENTS = """INSERT INTO outbox (topic, payload)
    SELECT * FROM unnest(CAST(:event_topics AS text[]), CAST(:event_payloads AS jsonb[]))"""
# Prepared once per connection (no ORM unit of work).
_INSERT = sql.Statement(text(INSERT_EVENTS))


def event_params(events: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """`INSERT_EVENTS`' parameters. The stored payload also carries the trace of the request
    that caused the event; what this process's subscribers get is the payload as given."""
    traceparent = telemetry.current_traceparent()
    extra = {telemetry.TRACE_KEY: traceparent} if traceparent else {}
    return {
        "event_topics": [topic for topic, _ in events],
        "event_payloads": [orjson.dumps({**payload, **extra}).decode() for _, payload in events],
    }


async def emit_many(session: AsyncSession, events: list[tuple[str, dict[str, Any]]]) -> None:
    if not events:
        return
    # Rows the caller added but did not flush are written first, as when this was an ORM
    # insert: their constraint errors surface before the event is written, not at commit.
    if session.new or session.dirty or session.deleted:
        await session.flush()
    await sql.fetch(session, _INSERT, event_params(events))
    announce(session, events)


# --- The relay's side of the table ---------------------------------------------------------

_CLAIM = text(
    """
    SELECT id, topic, attempts FROM outbox
    WHERE published_at IS NULL
    ORDER BY id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)
_MARK_PUBLISHED = text(
    "UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY(:ids)"
)
_LOAD = text("SELECT id, topic, payload, processed_at FROM outbox WHERE id = :id")
_MARK_PROCESSED = text(
    "UPDATE outbox SET processed_at = now() WHERE id = :id AND processed_at IS NULL"
)
_REPUBLISH_LOST = text(
    """
    UPDATE outbox SET published_at = NULL
    WHERE published_at < :cutoff AND processed_at IS NULL AND attempts < :max_attempts
    """
)
# Handed to the queue and not processed yet, oldest first (ix_outbox_unprocessed).
_IN_FLIGHT = text(
    """
    SELECT id, attempts FROM outbox
    WHERE published_at IS NOT NULL AND processed_at IS NULL
      AND published_at < :cutoff AND attempts < :max_attempts
    ORDER BY published_at
    LIMIT :limit
    """
)
# Only the delivery that was checked: a relay may have handed the event over again meanwhile.
_REPUBLISH = text(
    """
    UPDATE outbox SET published_at = NULL
    FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[])) AS lost(id, attempts)
    WHERE outbox.id = lost.id AND outbox.attempts = lost.attempts
      AND outbox.published_at IS NOT NULL AND outbox.processed_at IS NULL
    """
)
_DEAD_LETTERS = text(
    "SELECT count(*) FROM outbox WHERE processed_at IS NULL AND attempts >= :max_attempts"
)
_DELETE_PROCESSED = text("DELETE FROM outbox WHERE processed_at < :cutoff")
# For /metrics: each part is read through one of the two partial indexes (unpublished by id,
# published-but-unprocessed by published_at), so the query stays cheap with a large backlog.
_LOCAL_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")
_PENDING_STATS = text(
    """
    SELECT
      (SELECT count(*) FROM outbox WHERE published_at IS NULL)
      + (SELECT count(*) FROM outbox
         WHERE published_at IS NOT NULL AND processed_at IS NULL AND attempts < :max_attempts)
        AS backlog,
      LEAST(
        (SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1),
        (SELECT min(created_at) FROM outbox
         WHERE published_at IS NOT NULL AND processed_at IS NULL AND attempts < :max_attempts)
      ) AS oldest,
      (SELECT count(*) FROM outbox
       WHERE published_at IS NOT NULL AND processed_at IS NULL AND attempts >= :max_attempts)
        AS dead_letters
    """
)

# Deliveries after which an event is a dead letter: kept, counted, alerted on, not retried.
DEAD_LETTER_ATTEMPTS = 10


async def claim_unpublished(session: AsyncSession, limit: int) -> Sequence[AnyRow]:
    """Lock a batch of unpublished events; concurrent relays skip each other's rows."""
    return (await session.execute(_CLAIM, {"limit": limit})).all()


async def mark_published(session: AsyncSession, ids: Sequence[int]) -> None:
    await session.execute(_MARK_PUBLISHED, {"ids": list(ids)})


async def load_event(session: AsyncSession, event_id: int) -> AnyRow | None:
    return (await session.execute(_LOAD, {"id": event_id})).one_or_none()


async def mark_processed(session: AsyncSession, event_id: int) -> None:
    await session.execute(_MARK_PROCESSED, {"id": event_id})


async def republish_lost(session: AsyncSession, older_than: datetime, max_attempts: int) -> int:
    """Hand events over again whose job never finished (lost with Redis, or crashed)."""
    result = await session.execute(
        _REPUBLISH_LOST, {"cutoff": older_than, "max_attempts": max_attempts}
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def in_flight(
    session: AsyncSession, older_than: datetime, max_attempts: int, limit: int
) -> Sequence[AnyRow]:
    """Events handed to the queue before `older_than` and not processed: (id, attempts)."""
    params = {"cutoff": older_than, "max_attempts": max_attempts, "limit": limit}
    return (await session.execute(_IN_FLIGHT, params)).all()


async def republish(session: AsyncSession, deliveries: Sequence[tuple[int, int]]) -> int:
    """Hand these (event id, attempts) deliveries over again, now: their jobs are known lost."""
    if not deliveries:
        return 0
    ids, attempts = zip(*deliveries, strict=True)
    result = await session.execute(_REPUBLISH, {"ids": list(ids), "attempts": list(attempts)})
    return int(getattr(result, "rowcount", 0) or 0)


async def count_dead_letters(session: AsyncSession, max_attempts: int) -> int:
    """Events given up on after `max_attempts` deliveries: kept, counted, alerted on."""
    return int(await session.scalar(_DEAD_LETTERS, {"max_attempts": max_attempts}) or 0)


async def delete_processed(session: AsyncSession, older_than: datetime) -> int:
    result = await session.execute(_DELETE_PROCESSED, {"cutoff": older_than})
    return int(getattr(result, "rowcount", 0) or 0)


async def pending_stats(session: AsyncSession, *, timeout_ms: int) -> AnyRow:
    """Backlog (dead letters excluded), its oldest `created_at`, and the dead letters, under
    a statement timeout of its own (the scrape must never wait on a busy database)."""
    await session.execute(_LOCAL_TIMEOUT, {"ms": str(timeout_ms)})
    return (await session.execute(_PENDING_STATS, {"max_attempts": DEAD_LETTER_ATTEMPTS})).one()
