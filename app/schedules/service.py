from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.access import require_own_clinic
from app.auth.dependencies import Principal
from app.catalog import service as catalog_service
from app.kit import outbox
from app.kit.cache import Staleness
from app.kit.errors import Forbidden, NotFound
from app.models import Provider, Role
from app.schedules import repository
from app.schedules.schemas import (
    ScheduleIn,
    ScheduleOut,
    ScheduleRuleOut,
    TimeOffIn,
    TimeOffOut,
)

# A schedule may change any of the provider's dates (and its profile shows it); time off only
# its own.
STALENESS = (Staleness("schedule."), Staleness("time_off.", dated=True))


async def managed_provider(
    session: AsyncSession, principal: Principal, provider_id: uuid.UUID
) -> Provider:
    """The provider, if the caller is that provider, staff of its clinic, or an admin."""
    provider = await catalog_service.active_provider(session, provider_id)
    if principal.role is Role.ADMIN or principal.user_id == provider.user_id:
        return provider
    if principal.role is Role.STAFF:
        require_own_clinic(principal, provider.clinic_id, "manage schedules")
        return provider
    raise Forbidden("Only the provider, staff of their clinic or an admin may do this.")


async def _schedule(session: AsyncSession, provider: Provider) -> ScheduleOut:
    rules = await repository.list_rules(session, provider.user_id)
    return ScheduleOut(
        provider_id=provider.user_id,
        timezone=provider.timezone,
        slot_minutes=provider.slot_minutes,
        rules=[
            ScheduleRuleOut(weekday=r.weekday, start=r.start_time, end=r.end_time) for r in rules
        ],
    )


async def get_schedule(
    session: AsyncSession, principal: Principal, provider_id: uuid.UUID
) -> ScheduleOut:
    return await _schedule(session, await managed_provider(session, principal, provider_id))


async def replace_schedule(
    session: AsyncSession, principal: Principal, provider_id: uuid.UUID, data: ScheduleIn
) -> ScheduleOut:
    provider = await managed_provider(session, principal, provider_id)
    # Booked appointments outside the new template stay booked: the event lets a worker tell
    # their patients, and availability simply stops offering the old slots.
    await repository.replace_rules(
        session, provider.user_id, ((r.weekday, r.start_time, r.end_time) for r in data.rules)
    )
    await outbox.emit(
        session,
        "schedule.changed",
        {"provider_id": str(provider.user_id), "changed_by": str(principal.user_id)},
    )
    return await _schedule(session, provider)


def _time_off_out(entry: object) -> TimeOffOut:
    return TimeOffOut.model_validate(entry, from_attributes=True)


async def add_time_off(
    session: AsyncSession, principal: Principal, provider_id: uuid.UUID, data: TimeOffIn
) -> TimeOffOut:
    provider = await managed_provider(session, principal, provider_id)
    entry = await repository.insert_time_off(
        session,
        provider_id=provider.user_id,
        starts_at=data.starts_at,
        ends_at=data.ends_at,
        reason=data.reason,
    )
    await outbox.emit(
        session,
        "time_off.added",
        {
            "provider_id": str(provider.user_id),
            "time_off_id": str(entry.id),
            "starts_at": entry.starts_at.isoformat(),
            "ends_at": entry.ends_at.isoformat(),
        },
    )
    return _time_off_out(entry)


async def list_time_off(
    session: AsyncSession, principal: Principal, provider_id: uuid.UUID
) -> list[TimeOffOut]:
    provider = await managed_provider(session, principal, provider_id)
    entries = await repository.list_time_off(
        session, provider.user_id, ending_after=datetime.now(UTC)
    )
    return [_time_off_out(e) for e in entries]


async def remove_time_off(
    session: AsyncSession, principal: Principal, provider_id: uuid.UUID, time_off_id: uuid.UUID
) -> None:
    provider = await managed_provider(session, principal, provider_id)
    if not await repository.delete_time_off(session, provider.user_id, time_off_id):
        raise NotFound("No such time off.")
    await outbox.emit(
        session,
        "time_off.removed",
        {"provider_id": str(provider.user_id), "time_off_id": str(time_off_id)},
    )
