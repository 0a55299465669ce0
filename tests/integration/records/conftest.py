"""Arranging records tests: an app whose local storage lives in a folder of the test run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.kit.db import Database
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Account, Accounts, client_for, make_settings, running_app
from tests.fixtures.booking import Booking, ProviderSetup

RECORD = {
    "record_type": "lab_result",
    "title": "Blood test",
    "content_type": "text/plain",
    "size_bytes": 11,
}


def records_settings(settings: Settings, folder: Path, **overrides: Any) -> Settings:
    return make_settings(
        settings.database_url, settings.redis_url, storage_local_dir=folder, **overrides
    )


@pytest.fixture(scope="package")
async def records_app(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    async with running_app(records_settings(settings, tmp_path_factory.mktemp("records"))) as app:
        yield app


@pytest.fixture
async def http(records_app: FastAPI, database: Database) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the records app; tables are emptied and Redis flushed after the test."""
    async with client_for(records_app) as client:
        yield client


@dataclass
class CareTeam:
    """A patient with a visit at a clinic, the visit's provider, that clinic's staff, and
    people with no business with the patient."""

    patient: Account
    provider: ProviderSetup
    staff: Account
    admin: Account
    other_patient: Account
    other_provider: ProviderSetup
    other_staff: Account

    def records_path(self, patient: Account | None = None) -> str:
        return f"/v1/patients/{(patient or self.patient).id}/records"


async def add_visit(
    database: Database,
    provider: ProviderSetup,
    patient: Account,
    *,
    status: str = "booked",
    days_ahead: int = 3,
) -> None:
    """An appointment row straight in the table (the booking rules are not under test)."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(
        days=days_ahead
    )
    async with database.unit_of_work() as session:
        await session.execute(
            text(
                "INSERT INTO appointments (id, provider_id, provider_key, patient_id, "
                "patient_key, clinic_id, starts_at, ends_at, status) "
                "SELECT gen_random_uuid(), p.user_id, p.key, u.id, u.key, p.clinic_id, "
                "CAST(:s AS timestamptz), CAST(:s AS timestamptz) + interval '30 minutes', :st "
                "FROM providers p, users u WHERE p.user_id = :p AND u.id = :u"
            ),
            {"p": provider.id, "u": patient.id, "s": start, "st": status},
        )


async def add_records(
    database: Database, patient: Account, uploaded_by: Account, count: int
) -> list[uuid.UUID]:
    """`count` record rows, one second apart (the last one newest); their ids, oldest first."""
    async with database.unit_of_work() as session:
        result = await session.execute(
            text(
                "INSERT INTO medical_records (id, patient_id, uploaded_by, record_type, title, "
                "storage_key, content_type, size_bytes, uploaded_at) "
                "SELECT ids.id, CAST(:p AS uuid), :u, 'lab_result', 'Result ' || g, "
                "'patients/' || CAST(:p AS uuid) || '/' || ids.id, 'application/pdf', 1000 + g, "
                "now() - interval '1 hour' + g * interval '1 second' "
                "FROM generate_series(1, :n) AS g, LATERAL (SELECT gen_random_uuid() AS id) ids "
                "RETURNING id"
            ),
            {"p": patient.id, "u": uploaded_by.id, "n": count},
        )
        return list(result.scalars().all())


@pytest.fixture
async def team(booking: Booking, accounts: Accounts, database: Database) -> CareTeam:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT, full_name="Pat Ient")
    await add_visit(database, provider, patient)
    other_clinic = await booking.clinic(name="Other Clinic")
    other_provider = await booking.provider(clinic_id=other_clinic, full_name="Dr. Other")
    other_patient = await accounts.create(Role.PATIENT)
    # The other provider sees another patient: having patients grants nothing about this one.
    await add_visit(database, other_provider, other_patient)
    return CareTeam(
        patient=patient,
        provider=provider,
        staff=await accounts.create(Role.STAFF, clinic_id=provider.clinic_id),
        admin=await accounts.create(Role.ADMIN),
        other_patient=other_patient,
        other_provider=other_provider,
        other_staff=await accounts.create(Role.STAFF, clinic_id=other_clinic),
    )
