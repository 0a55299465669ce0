from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Clinic, Provider, Specialty


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


async def get_provider(session: AsyncSession, provider_id: uuid.UUID) -> Provider | None:
    return await session.get(Provider, provider_id)


async def insert_provider(session: AsyncSession, provider: Provider) -> Provider:
    session.add(provider)
    await session.flush()
    return provider
