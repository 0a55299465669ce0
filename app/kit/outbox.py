"""The transactional outbox: events are rows written in the same transaction as the change.

The relay in `workers/` publishes them to the job queue after commit, so a job can never run
for a change that rolled back, and no change loses its follow-ups when Redis is down.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import OutboxEvent


async def emit(session: AsyncSession, topic: str, payload: dict[str, Any]) -> None:
    session.add(OutboxEvent(topic=topic, payload=payload))
    await session.flush()


async def emit_many(session: AsyncSession, events: list[tuple[str, dict[str, Any]]]) -> None:
    session.add_all(OutboxEvent(topic=topic, payload=payload) for topic, payload in events)
    await session.flush()
