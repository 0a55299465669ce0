from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import time

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ScheduleRule


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
