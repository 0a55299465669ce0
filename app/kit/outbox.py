"""The transactional outbox: events are rows written in the same transaction as the change.

The relay in `workers/` publishes them to the job queue after commit, so a job can never run
for a change that rolled back, and no change loses its follow-ups when Redis is down. The same
events reach this process's subscribers (cache invalidation) right after the commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.kit.db import after_commit, event_bus_of
from app.models import OutboxEvent


def _announce(session: AsyncSession, events: list[tuple[str, dict[str, Any]]]) -> None:
    bus = event_bus_of(session)
    if bus is None:
        return

    async def publish() -> None:
        for topic, payload in events:
            await bus.publish(topic, payload)

    after_commit(session, publish)


async def emit(session: AsyncSession, topic: str, payload: dict[str, Any]) -> None:
    await emit_many(session, [(topic, payload)])


async def emit_many(session: AsyncSession, events: list[tuple[str, dict[str, Any]]]) -> None:
    session.add_all(OutboxEvent(topic=topic, payload=payload) for topic, payload in events)
    await session.flush()
    _announce(session, events)
