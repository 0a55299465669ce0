from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, time

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ScheduleRule, TimeOff


async def replace_rules(
    session: AsyncSession, provider_id: uuid.UUID, rules: Iterable[tuple[int, time, time]]
) -> None:
    """Replace a provider's weekly template with the given (weekday, start, end) rules."""
    await session.execute(delete(ScheduleRule).where(ScheduleRule.provider_id == provider_id))
    session.add_all(
        ScheduleRule(provider_id=provider_id, weekday=day, start_time=start, end_time=end)
        for day, start, end in rules
    )
    await session.flush()


async def list_rules(session: AsyncSession, provider_id: uuid.UUID) -> Sequence[ScheduleRule]:
    result = await session.execute(
        select(ScheduleRule)
        .where(ScheduleRule.provider_id == provider_id)
        .order_by(ScheduleRule.weekday, ScheduleRule.start_time)
    )
    return result.scalars().all()


async def insert_time_off(
    session: AsyncSession,
    *,
    provider_id: uuid.UUID,
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
) -> TimeOff:
    entry = TimeOff(provider_id=provider_id, starts_at=starts_at, ends_at=ends_at, reason=reason)
    session.add(entry)
    await session.flush()
    return entry


async def delete_time_off(
    session: AsyncSession, provider_id: uuid.UUID, time_off_id: uuid.UUID
) -> bool:
    result = await session.execute(
        delete(TimeOff)
        .where(TimeOff.id == time_off_id, TimeOff.provider_id == provider_id)
        .returning(TimeOff.id)
    )
    return result.scalar_one_or_none() is not None


async def list_time_off(
    session: AsyncSession, provider_id: uuid.UUID, *, ending_after: datetime
) -> Sequence[TimeOff]:
    result = await session.execute(
        select(TimeOff)
        .where(TimeOff.provider_id == provider_id, TimeOff.ends_at > ending_after)
        .order_by(TimeOff.starts_at)
        .limit(500)
    )
    return result.scalars().all()
