"""The demo dataset and operator accounts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import time

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import repository as auth_repository
from app.auth import service as auth_service
from app.auth.schemas import CreateUserIn
from app.catalog import repository as catalog_repository
from app.kit.db import Database
from app.kit.security import Passwords
from app.models import Provider, Role, User
from app.schedules import repository as schedules_repository
from app.settings import Settings

DEMO_PASSWORD = "carebook-demo"  # noqa: S105 - printed to the operator on purpose


@dataclass(frozen=True)
class DemoProvider:
    email: str
    full_name: str
    clinic: str
    specialty: str
    slot_minutes: int
    # (weekday, start, end) in the provider's local time; two rules a day make a split shift.
    rules: tuple[tuple[int, time, time], ...]


DEMO_CLINICS = {"Riverside Clinic": "Europe/London", "Harbor Telehealth": "America/New_York"}
DEMO_SPECIALTIES = ("General Practice", "Dermatology", "Psychotherapy", "Pediatrics")

_WEEKDAYS_SPLIT = tuple(
    rule
    for day in range(1, 6)
    for rule in ((day, time(9, 0), time(12, 0)), (day, time(13, 0), time(17, 0)))
)
_MON_WED_FRI = tuple((day, time(8, 30), time(14, 30)) for day in (1, 3, 5))
_EVENINGS_AND_SATURDAY = (
    *((day, time(16, 0), time(20, 0)) for day in (2, 4)),
    (6, time(9, 0), time(13, 0)),
)

DEMO_PROVIDERS = (
    DemoProvider(
        "dr.adams@example.com",
        "Dr. Olivia Adams",
        "Riverside Clinic",
        "General Practice",
        15,
        _WEEKDAYS_SPLIT,
    ),
    DemoProvider(
        "dr.baker@example.com",
        "Dr. Samuel Baker",
        "Riverside Clinic",
        "General Practice",
        20,
        _MON_WED_FRI,
    ),
    DemoProvider(
        "dr.clarke@example.com",
        "Dr. Amelia Clarke",
        "Riverside Clinic",
        "Dermatology",
        30,
        _WEEKDAYS_SPLIT,
    ),
    DemoProvider(
        "dr.davies@example.com",
        "Dr. Noah Davies",
        "Riverside Clinic",
        "Pediatrics",
        20,
        _EVENINGS_AND_SATURDAY,
    ),
    DemoProvider(
        "dr.evans@example.com",
        "Dr. Grace Evans",
        "Riverside Clinic",
        "Psychotherapy",
        50,
        _MON_WED_FRI,
    ),
    DemoProvider(
        "dr.foster@example.com",
        "Dr. Ethan Foster",
        "Harbor Telehealth",
        "General Practice",
        15,
        _WEEKDAYS_SPLIT,
    ),
    DemoProvider(
        "dr.garcia@example.com",
        "Dr. Sofia Garcia",
        "Harbor Telehealth",
        "Dermatology",
        20,
        _EVENINGS_AND_SATURDAY,
    ),
    DemoProvider(
        "dr.hughes@example.com",
        "Dr. Liam Hughes",
        "Harbor Telehealth",
        "Psychotherapy",
        45,
        _WEEKDAYS_SPLIT,
    ),
    DemoProvider(
        "dr.ito@example.com", "Dr. Hana Ito", "Harbor Telehealth", "Pediatrics", 30, _MON_WED_FRI
    ),
    DemoProvider(
        "dr.jensen@example.com",
        "Dr. Lucas Jensen",
        "Harbor Telehealth",
        "Psychotherapy",
        30,
        _EVENINGS_AND_SATURDAY,
    ),
)

DEMO_PATIENTS = tuple(
    (f"patient{n:02d}@example.com", f"Demo Patient {n:02d}") for n in range(1, 21)
)
DEMO_ADMIN = ("admin@example.com", "Demo Administrator")
DEMO_STAFF = {
    "Riverside Clinic": ("staff.riverside@example.com", "Riverside Front Desk"),
    "Harbor Telehealth": ("staff.harbor@example.com", "Harbor Front Desk"),
}


async def create_operator(settings: Settings, data: CreateUserIn) -> uuid.UUID:
    assert settings.database_url is not None
    database = Database.connect(settings, settings.database_url)
    try:
        async with database.unit_of_work() as session:
            user = await auth_service.create_operator(session, Passwords(settings), data)
            return user.id
    finally:
        await database.dispose()


async def _user(
    session: AsyncSession,
    passwords: Passwords,
    email: str,
    full_name: str,
    role: Role,
    clinic_id: uuid.UUID | None = None,
) -> User:
    existing = await auth_repository.get_user_by_email(session, email)
    if existing is not None:
        return existing
    return await auth_service.create_account(
        session,
        passwords,
        email=email,
        password=DEMO_PASSWORD,
        full_name=full_name,
        role=role,
        clinic_id=clinic_id,
    )


async def _clinic_id(session: AsyncSession, name: str, timezone: str) -> uuid.UUID:
    clinic = await catalog_repository.get_clinic_by_name(session, name)
    if clinic is None:
        clinic = await catalog_repository.insert_clinic(session, name=name, timezone=timezone)
    return clinic.id


async def _specialty_id(session: AsyncSession, name: str) -> uuid.UUID:
    specialty = await catalog_repository.get_specialty_by_name(session, name)
    if specialty is None:
        specialty = await catalog_repository.insert_specialty(session, name)
    return specialty.id


async def _seed_demo(session: AsyncSession, passwords: Passwords) -> None:
    clinic_ids = {
        name: await _clinic_id(session, name, zone) for name, zone in DEMO_CLINICS.items()
    }
    specialty_ids = {name: await _specialty_id(session, name) for name in DEMO_SPECIALTIES}
    await _user(session, passwords, *DEMO_ADMIN, Role.ADMIN)
    for clinic_name, (email, full_name) in DEMO_STAFF.items():
        await _user(session, passwords, email, full_name, Role.STAFF, clinic_ids[clinic_name])
    for email, full_name in DEMO_PATIENTS:
        await _user(session, passwords, email, full_name, Role.PATIENT)
    for spec in DEMO_PROVIDERS:
        user = await _user(session, passwords, spec.email, spec.full_name, Role.PROVIDER)
        if await catalog_repository.get_provider(session, user.id) is not None:
            continue
        await catalog_repository.insert_provider(
            session,
            Provider(
                user_id=user.id,
                clinic_id=clinic_ids[spec.clinic],
                specialty_id=specialty_ids[spec.specialty],
                timezone=DEMO_CLINICS[spec.clinic],
                slot_minutes=spec.slot_minutes,
                bio=f"{spec.specialty} at {spec.clinic}.",
            ),
        )
        await schedules_repository.replace_rules(session, user.id, spec.rules)


async def seed_demo(settings: Settings) -> None:
    """Two clinics in different zones, four specialties, ten providers with weekly schedules,
    twenty patients, an admin and a staff member per clinic. Safe to run again."""
    assert settings.database_url is not None
    database = Database.connect(settings, settings.database_url)
    try:
        async with database.unit_of_work() as session:
            await _seed_demo(session, Passwords(settings))
    finally:
        await database.dispose()


def print_demo_logins(host: str, port: int) -> None:
    shown_host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104
    base = f"http://{shown_host}:{port}"
    lines = [
        "",
        f"Carebook demo is seeded. Every demo account uses the password '{DEMO_PASSWORD}'.",
        f"  admin     {DEMO_ADMIN[0]}",
        *(f"  staff     {email}  ({clinic})" for clinic, (email, _) in DEMO_STAFF.items()),
        *(f"  provider  {p.email}  ({p.specialty}, {p.clinic})" for p in DEMO_PROVIDERS[:3]),
        "            … and 7 more providers dr.<name>@example.com",
        f"  patient   {DEMO_PATIENTS[0][0]} … {DEMO_PATIENTS[-1][0]}",
        "",
        "Get a token:",
        f"  curl -s {base}/v1/auth/token -H 'content-type: application/json' \\",
        f'       -d \'{{"email": "{DEMO_PATIENTS[0][0]}", "password": "{DEMO_PASSWORD}"}}\'',
        f"API docs: {base}/docs    Readiness: {base}/health/ready",
        "",
    ]
    typer.echo("\n".join(lines))
