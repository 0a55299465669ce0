from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import bindparam, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit import sql
from app.kit.db import AnyRow
from app.models import Clinic, Provider, Specialty, User


async def get_clinic(session: AsyncSession, clinic_id: uuid.UUID) -> Clinic | None:
    return await session.get(Clinic, clinic_id)


async def get_clinic_by_name(session: AsyncSession, name: str) -> Clinic | None:
    result = await session.execute(select(Clinic).where(Clinic.name == name).limit(1))
    return result.scalar_one_or_none()


async def insert_clinic(session: AsyncSession, *, name: str, timezone: str) -> Clinic:
    clinic = Clinic(name=name, timezone=timezone)
    session.add(clinic)
    await session.flush()
    return clinic


Named = TypeVar("Named", Clinic, Specialty)


async def _page_by_name(
    session: AsyncSession, model: type[Named], after: tuple[str, uuid.UUID] | None, limit: int
) -> Sequence[Named]:
    query = select(model).order_by(model.name, model.id).limit(limit + 1)
    if after is not None:
        query = query.where(tuple_(model.name, model.id) > tuple_(*after))
    return (await session.execute(query)).scalars().all()


async def list_clinics(
    session: AsyncSession, *, after: tuple[str, uuid.UUID] | None, limit: int
) -> Sequence[Clinic]:
    return await _page_by_name(session, Clinic, after, limit)


async def list_specialties(
    session: AsyncSession, *, after: tuple[str, uuid.UUID] | None, limit: int
) -> Sequence[Specialty]:
    return await _page_by_name(session, Specialty, after, limit)


async def get_specialty_by_name(session: AsyncSession, name: str) -> Specialty | None:
    result = await session.execute(
        select(Specialty).where(func.lower(Specialty.name) == name.lower())
    )
    return result.scalar_one_or_none()


async def insert_specialty(session: AsyncSession, name: str) -> Specialty:
    specialty = Specialty(name=name)
    session.add(specialty)
    await session.flush()
    return specialty


async def ensure_specialty(session: AsyncSession, name: str) -> uuid.UUID:
    """The id of the specialty with this name (case-insensitive), created if new; race-free."""
    inserted = await session.execute(
        insert(Specialty)
        .values(name=name)
        .on_conflict_do_nothing(index_elements=[text("lower(name)")])
        .returning(Specialty.id)
    )
    specialty_id = inserted.scalar_one_or_none()
    if specialty_id is not None:
        return specialty_id
    existing = await get_specialty_by_name(session, name)
    assert existing is not None  # the conflicting row is committed, hence visible
    return existing.id


async def get_provider(session: AsyncSession, provider_id: uuid.UUID) -> Provider | None:
    return await session.get(Provider, provider_id)


async def insert_provider(session: AsyncSession, provider: Provider) -> Provider:
    session.add(provider)
    await session.flush()
    return provider


def _provider_view() -> Any:
    return (
        select(
            Provider.user_id.label("id"),
            User.full_name,
            Specialty.name.label("specialty"),
            Provider.clinic_id,
            Clinic.name.label("clinic_name"),
            Clinic.timezone.label("clinic_timezone"),
            Provider.bio,
            Provider.timezone,
            Provider.slot_minutes,
        )
        .join(User, User.id == Provider.user_id)
        .join(Specialty, Specialty.id == Provider.specialty_id)
        .join(Clinic, Clinic.id == Provider.clinic_id)
        .where(Provider.is_active, User.is_active)
    )


_PROVIDER_VIEW_BY_ID = sql.Statement(
    _provider_view().where(Provider.user_id == bindparam("provider_id"))
)


async def get_provider_view(executor: sql.Executor, provider_id: uuid.UUID) -> AnyRow | None:
    return await sql.fetchrow(executor, _PROVIDER_VIEW_BY_ID, {"provider_id": provider_id})


async def list_provider_views(
    session: AsyncSession,
    *,
    specialty: str | None,
    clinic_id: uuid.UUID | None,
    q: str | None,
    after: tuple[str, uuid.UUID] | None,
    limit: int,
) -> Sequence[AnyRow]:
    query = _provider_view().order_by(User.full_name, Provider.user_id).limit(limit + 1)
    if specialty is not None:
        query = query.where(func.lower(Specialty.name) == specialty.lower())
    if clinic_id is not None:
        query = query.where(Provider.clinic_id == clinic_id)
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(User.full_name.ilike(f"%{escaped}%", escape="\\"))
    if after is not None:
        query = query.where(tuple_(User.full_name, Provider.user_id) > tuple_(*after))
    return (await session.execute(query)).all()
