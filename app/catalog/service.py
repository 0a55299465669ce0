from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import service as auth_service
from app.auth.access import require_own_clinic
from app.auth.dependencies import Principal
from app.catalog import repository
from app.catalog.schemas import (
    ClinicIn,
    ClinicOut,
    ClinicSummary,
    ProviderCreated,
    ProviderIn,
    ProviderProfile,
    ProviderSummary,
    SpecialtyOut,
)
from app.kit import outbox, sql
from app.kit.cache import Cache, Scope, Staleness
from app.kit.db import AnyRow
from app.kit.errors import NotFound, ValidationFailed
from app.kit.pagination import PageParams, build_page, parse_uuid
from app.kit.security import Passwords
from app.models import Provider, Role

CATALOG_TTL_SECONDS = 300
# A new clinic or provider changes the catalogue's lists (a provider's profile, too).
STALENESS = (Staleness("clinic.", lists=True), Staleness("provider.", lists=True))


async def cached_json(
    cache: Cache,
    name: str,
    scope: Scope,
    key: str,
    compute: Callable[[], Awaitable[BaseModel]],
) -> bytes:
    """A catalogue document from the cache; computed (and stored) on a miss."""

    async def render() -> bytes:
        return orjson.dumps((await compute()).model_dump(mode="json"))

    return await cache.get_or_compute(name, scope, key, render, ttl_seconds=CATALOG_TTL_SECONDS)


async def create_clinic(session: AsyncSession, data: ClinicIn) -> ClinicOut:
    clinic = await repository.insert_clinic(session, name=data.name, timezone=data.timezone)
    await outbox.emit(session, "clinic.created", {"clinic_id": str(clinic.id)})
    return ClinicOut.model_validate(clinic)


async def list_clinics(
    session: AsyncSession, params: PageParams
) -> tuple[list[ClinicOut], str | None]:
    rows = await repository.list_clinics(
        session, after=params.position(str, parse_uuid), limit=params.limit
    )
    items, cursor = build_page(rows, params.limit, lambda c: (c.name, c.id))
    return [ClinicOut.model_validate(c) for c in items], cursor


async def list_specialties(
    session: AsyncSession, params: PageParams
) -> tuple[list[SpecialtyOut], str | None]:
    rows = await repository.list_specialties(
        session, after=params.position(str, parse_uuid), limit=params.limit
    )
    items, cursor = build_page(rows, params.limit, lambda s: (s.name, s.id))
    return [SpecialtyOut.model_validate(s) for s in items], cursor


async def create_provider(
    session: AsyncSession, passwords: Passwords, principal: Principal, data: ProviderIn
) -> ProviderCreated:
    require_own_clinic(principal, data.clinic_id, "add providers")
    if await repository.get_clinic(session, data.clinic_id) is None:
        raise ValidationFailed("clinic_id does not name a clinic", loc=("body", "clinic_id"))
    user = await auth_service.create_account(
        session,
        passwords,
        email=data.email,
        password=data.password,
        full_name=data.full_name,
        role=Role.PROVIDER,
    )
    specialty_id = await repository.ensure_specialty(session, data.specialty)
    await repository.insert_provider(
        session,
        Provider(
            user_id=user.id,
            clinic_id=data.clinic_id,
            specialty_id=specialty_id,
            timezone=data.timezone,
            slot_minutes=data.slot_minutes,
            bio=data.bio,
        ),
    )
    await outbox.emit(
        session,
        "provider.created",
        {"provider_id": str(user.id), "clinic_id": str(data.clinic_id)},
    )
    view = await repository.get_provider_view(session, user.id)
    assert view is not None
    return ProviderCreated(
        id=view.id,
        full_name=view.full_name,
        specialty=view.specialty,
        clinic_id=view.clinic_id,
        timezone=view.timezone,
        slot_minutes=view.slot_minutes,
    )


def _summary(row: AnyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "full_name": row.full_name,
        "specialty": row.specialty,
        "clinic": ClinicSummary(
            id=row.clinic_id, name=row.clinic_name, timezone=row.clinic_timezone
        ),
    }


async def list_providers(
    session: AsyncSession,
    params: PageParams,
    *,
    specialty: str | None,
    clinic_id: uuid.UUID | None,
    q: str | None,
) -> tuple[list[ProviderSummary], str | None]:
    rows = await repository.list_provider_views(
        session,
        specialty=specialty,
        clinic_id=clinic_id,
        q=q,
        after=params.position(str, parse_uuid),
        limit=params.limit,
    )
    items, cursor = build_page(rows, params.limit, lambda r: (r.full_name, r.id))
    return [ProviderSummary(**_summary(r)) for r in items], cursor


async def active_provider(session: AsyncSession, provider_id: uuid.UUID) -> Provider:
    provider = await repository.get_provider(session, provider_id)
    if provider is None or not provider.is_active:
        raise NotFound("No such provider.")
    return provider


async def get_profile(executor: sql.Executor, provider_id: uuid.UUID) -> ProviderProfile:
    row = await repository.get_provider_view(executor, provider_id)
    if row is None:
        raise NotFound("No such provider.")
    return ProviderProfile(
        **_summary(row),
        clinic_id=row.clinic_id,
        bio=row.bio,
        timezone=row.timezone,
        slot_minutes=row.slot_minutes,
    )
