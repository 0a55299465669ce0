"""Alembic is the only way the schema is built: it must match the models exactly, go down to an
empty database and up again, and its exclusion constraints must make double bookings impossible
even for SQL that bypasses the application."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg.exceptions  # type: ignore[import-untyped]
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.kit.migrations import alembic_config, downgrade, upgrade
from app.models import Base

if TYPE_CHECKING:
    from tests.fixtures.servers import TestServers
from tests.fixtures.servers import fresh_database as shared_fresh_database
from tests.fixtures.world import Party, SqlWorld, sql_world

PROVIDER_OVERLAP = "ex_appointments_provider_overlap"
PATIENT_OVERLAP = "ex_appointments_patient_overlap"


def fresh_database(servers: TestServers) -> AbstractAsyncContextManager[str]:
    return shared_fresh_database(servers, "carebook_mig", migrate=False)


@pytest.fixture
async def empty_database_url(test_servers: TestServers) -> AsyncIterator[str]:
    async with fresh_database(test_servers) as url:
        yield url


@pytest.fixture(scope="module")
async def migrated_engine(test_servers: TestServers) -> AsyncIterator[AsyncEngine]:
    """One database of this module's own, upgraded to head; tests add rows and clean up."""
    async with fresh_database(test_servers) as url:
        await upgrade(url)
        engine = create_async_engine(url, poolclass=pool.NullPool)
        try:
            yield engine
        finally:
            await engine.dispose()


def _schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            "target_metadata": Base.metadata,
        },
    )
    return list(compare_metadata(context, Base.metadata))


async def _differences(url: str) -> list[Any]:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_schema_differences)
    finally:
        await engine.dispose()


async def _public_relations(url: str) -> dict[str, str]:
    """Every table, index, sequence, view... in the public schema: name -> relkind."""
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT c.relname, c.relkind::text FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
                )
            )
            return {str(name): str(kind) for name, kind in rows}
    finally:
        await engine.dispose()


async def _version(url: str) -> list[str]:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            return [
                str(v)
                for v in (await connection.scalars(text("SELECT version_num FROM alembic_version")))
            ]
    finally:
        await engine.dispose()


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def test_upgrade_matches_models_downgrade_empties_and_upgrade_again(
    empty_database_url: str,
) -> None:
    url = empty_database_url

    await upgrade(url)
    assert await _version(url) == [_head()]
    assert await _differences(url) == []
    tables = {name for name, kind in (await _public_relations(url)).items() if kind == "r"}
    assert tables == {*Base.metadata.tables, "alembic_version"}

    await downgrade(url, "base")
    leftovers = {
        name: kind
        for name, kind in (await _public_relations(url)).items()
        if not name.startswith("alembic_version")
    }
    assert leftovers == {}, f"downgrade to base left relations behind: {leftovers}"
    relations = await _public_relations(url)
    assert relations.get("alembic_version") == "r"
    assert await _version(url) == []

    await upgrade(url)
    assert await _version(url) == [_head()]
    assert await _differences(url) == []
    # Upgrading an up-to-date database is a no-op, not an error.
    await upgrade(url)
    assert await _version(url) == [_head()]


async def test_exclusion_constraints_exist_on_appointments(migrated_engine: AsyncEngine) -> None:
    async with migrated_engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'appointments'::regclass AND contype = 'x'"
            )
        )
        constraints = {str(name): str(definition) for name, _, definition in rows}
    assert set(constraints) == {PROVIDER_OVERLAP, PATIENT_OVERLAP}
    for definition in constraints.values():
        assert definition.startswith("EXCLUDE USING gist")
        assert "tstzrange(starts_at, ends_at, '[)'::text) WITH &&" in definition
        assert "'booked'" in definition
        assert "'checked_in'" in definition


# --- the database backstop against double booking, with raw SQL --------------------------------


START = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)
HALF_HOUR = timedelta(minutes=30)


@pytest.fixture
async def world(migrated_engine: AsyncEngine) -> AsyncIterator[SqlWorld]:
    """Raw rows of the test's own in this module's database."""
    async with sql_world(migrated_engine) as built:
        yield built


async def _book(
    engine: AsyncEngine,
    world: SqlWorld,
    provider: Party,
    patient: Party,
    starts_at: datetime,
    ends_at: datetime,
    status: str = "booked",
) -> uuid.UUID:
    """One INSERT in its own transaction (so a rejected one does not poison the next)."""
    async with engine.begin() as connection:
        appointment_id = (
            await connection.execute(
                text(
                    "INSERT INTO appointments (id, provider_id, provider_key, patient_id, "
                    "patient_key, clinic_id, starts_at, ends_at, status) VALUES "
                    "(gen_random_uuid(), :provider_id, :provider_key, :patient_id, :patient_key, "
                    ":clinic_id, :starts_at, :ends_at, :status) RETURNING id"
                ),
                {
                    "provider_id": provider.id,
                    "provider_key": provider.key,
                    "patient_id": patient.id,
                    "patient_key": patient.key,
                    "clinic_id": world.clinic_id,
                    "starts_at": starts_at,
                    "ends_at": ends_at,
                    "status": status,
                },
            )
        ).scalar_one()
    assert isinstance(appointment_id, uuid.UUID)
    return appointment_id


def _assert_exclusion_violation(error: pytest.ExceptionInfo[IntegrityError], name: str) -> None:
    cause = error.value.orig.__cause__ if error.value.orig is not None else None
    assert isinstance(cause, asyncpg.exceptions.ExclusionViolationError), repr(error.value)
    assert cause.sqlstate == "23P01"
    assert cause.constraint_name == name


async def _appointment_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = (await connection.execute(text("SELECT count(*) FROM appointments"))).scalar_one()
    return int(count)


async def test_overlapping_bookings_of_one_provider_are_rejected(
    migrated_engine: AsyncEngine, world: SqlWorld
) -> None:
    await _book(migrated_engine, world, world.provider_a, world.patient_1, START, START + HALF_HOUR)
    with pytest.raises(IntegrityError) as error:
        # A different patient, starting in the middle of the first visit.
        await _book(
            migrated_engine,
            world,
            world.provider_a,
            world.patient_2,
            START + timedelta(minutes=15),
            START + timedelta(minutes=45),
        )
    _assert_exclusion_violation(error, PROVIDER_OVERLAP)
    with pytest.raises(IntegrityError) as error:
        # Exactly the same slot.
        await _book(
            migrated_engine, world, world.provider_a, world.patient_3, START, START + HALF_HOUR
        )
    _assert_exclusion_violation(error, PROVIDER_OVERLAP)
    assert await _appointment_count(migrated_engine) == 1


async def test_checked_in_visit_also_blocks_the_provider(
    migrated_engine: AsyncEngine, world: SqlWorld
) -> None:
    await _book(
        migrated_engine,
        world,
        world.provider_a,
        world.patient_1,
        START,
        START + HALF_HOUR,
        status="checked_in",
    )
    with pytest.raises(IntegrityError) as error:
        await _book(
            migrated_engine, world, world.provider_a, world.patient_2, START, START + HALF_HOUR
        )
    _assert_exclusion_violation(error, PROVIDER_OVERLAP)


async def test_back_to_back_bookings_are_accepted(
    migrated_engine: AsyncEngine, world: SqlWorld
) -> None:
    await _book(migrated_engine, world, world.provider_a, world.patient_1, START, START + HALF_HOUR)
    # end == next start: the '[)' ranges touch but do not overlap, for provider and patient alike.
    await _book(
        migrated_engine,
        world,
        world.provider_a,
        world.patient_1,
        START + HALF_HOUR,
        START + 2 * HALF_HOUR,
    )
    await _book(
        migrated_engine,
        world,
        world.provider_a,
        world.patient_2,
        START - HALF_HOUR,
        START,
    )
    assert await _appointment_count(migrated_engine) == 3


async def test_an_overlapping_booking_is_accepted_when_the_first_is_cancelled(
    migrated_engine: AsyncEngine, world: SqlWorld
) -> None:
    cancelled = await _book(
        migrated_engine,
        world,
        world.provider_a,
        world.patient_1,
        START,
        START + HALF_HOUR,
        status="cancelled",
    )
    await _book(migrated_engine, world, world.provider_a, world.patient_2, START, START + HALF_HOUR)

    # Cancelling a booked visit frees its slot too.
    second_start = START + timedelta(days=1)
    first = await _book(
        migrated_engine,
        world,
        world.provider_a,
        world.patient_1,
        second_start,
        second_start + HALF_HOUR,
    )
    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("UPDATE appointments SET status = 'cancelled' WHERE id = :id"), {"id": first}
        )
    await _book(
        migrated_engine,
        world,
        world.provider_a,
        world.patient_3,
        second_start + timedelta(minutes=10),
        second_start + timedelta(minutes=40),
    )
    assert cancelled != first
    assert await _appointment_count(migrated_engine) == 4

    # Re-activating a cancelled visit whose slot is now taken is rejected as well.
    with pytest.raises(IntegrityError) as error:
        async with migrated_engine.begin() as connection:
            await connection.execute(
                text("UPDATE appointments SET status = 'booked' WHERE id = :id"), {"id": first}
            )
    _assert_exclusion_violation(error, PROVIDER_OVERLAP)


async def test_one_patient_cannot_hold_overlapping_visits_with_two_providers(
    migrated_engine: AsyncEngine, world: SqlWorld
) -> None:
    await _book(migrated_engine, world, world.provider_a, world.patient_1, START, START + HALF_HOUR)
    with pytest.raises(IntegrityError) as error:
        await _book(
            migrated_engine,
            world,
            world.provider_b,
            world.patient_1,
            START + timedelta(minutes=20),
            START + timedelta(minutes=50),
        )
    _assert_exclusion_violation(error, PATIENT_OVERLAP)
    # The other provider is free at that time for somebody else.
    await _book(
        migrated_engine,
        world,
        world.provider_b,
        world.patient_2,
        START + timedelta(minutes=20),
        START + timedelta(minutes=50),
    )
    assert await _appointment_count(migrated_engine) == 2
