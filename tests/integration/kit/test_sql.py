"""`kit.sql` statements run on the asyncpg connection under a session, and keep the session's
guarantees: its transaction (committed or rolled back by the boundary, never by themselves),
SQLAlchemy's errors, and the engine's cursor events."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from app.kit import sql
from app.kit.db import Database, violated_constraint
from app.models import Clinic
from tests.fixtures.app import count_statements

_INSERT_CLINIC = sql.Statement(
    text("INSERT INTO clinics (id, name, timezone) VALUES (:id, :name, 'UTC') RETURNING id, name")
)
_COUNT_CLINICS = sql.Statement(text("SELECT count(*) FROM clinics"))


async def _clinics(database: Database) -> int:
    async with database.reading(primary=True) as session:
        return int(await session.scalar(select(func.count()).select_from(Clinic)) or 0)


async def test_statements_run_in_the_unit_of_work_and_commit_with_it(database: Database) -> None:
    clinic_id = uuid.uuid4()
    async with database.unit_of_work() as session:
        session.add(Clinic(name="through the session", timezone="UTC"))
        await session.flush()
        row = await sql.fetchrow(session, _INSERT_CLINIC, {"id": clinic_id, "name": "direct"})
        # Both writes are in one transaction: each side sees the other's uncommitted row.
        assert await sql.fetchval(session, _COUNT_CLINICS, {}) == 2
        assert await session.scalar(select(func.count()).select_from(Clinic)) == 2
        assert await _clinics(database) == 0  # nothing is visible outside before the commit

    assert row is not None
    assert (row.id, row.name) == (clinic_id, "direct")  # attributes, as on SQLAlchemy rows
    assert (row["id"], row[1]) == (clinic_id, "direct")
    assert await _clinics(database) == 2


async def _insert_then_fail(database: Database) -> None:
    async with database.unit_of_work() as session:
        # The first statement of the session, so it is the one that must send BEGIN.
        await sql.fetch(session, _INSERT_CLINIC, {"id": uuid.uuid4(), "name": "alone"})
        raise RuntimeError("the handler failed after the write")


async def test_a_unit_of_work_that_raises_takes_their_writes_back(database: Database) -> None:
    with pytest.raises(RuntimeError):
        await _insert_then_fail(database)

    assert await _clinics(database) == 0


async def _insert_twice(database: Database, clinic_id: uuid.UUID) -> None:
    async with database.unit_of_work() as session:
        await sql.fetch(session, _INSERT_CLINIC, {"id": uuid.uuid4(), "name": "kept out"})
        await sql.fetch(session, _INSERT_CLINIC, {"id": clinic_id, "name": "twice"})


async def test_errors_are_sqlalchemys_with_the_constraint_and_the_session_rolls_back(
    database: Database,
) -> None:
    clinic_id = uuid.uuid4()
    async with database.unit_of_work() as session:
        await sql.fetch(session, _INSERT_CLINIC, {"id": clinic_id, "name": "once"})

    with pytest.raises(IntegrityError) as raised:
        await _insert_twice(database, clinic_id)

    assert violated_constraint(raised.value) == "pk_clinics"
    assert await _clinics(database) == 1  # the failed unit's first insert went with it
    async with database.unit_of_work() as session:  # and the pooled connection is usable
        assert await sql.fetchval(session, _COUNT_CLINICS, {}) == 1


async def test_reads_run_in_autocommit_and_the_engines_listeners_see_them(
    database: Database,
) -> None:
    with count_statements(database.primary) as log:
        async with database.reading(primary=True) as session:
            assert await sql.fetchval(session, _COUNT_CLINICS, {}) == 0
            assert await sql.fetchrow(session, _COUNT_CLINICS, {}) is not None

    assert log.statements == [_COUNT_CLINICS.sql, _COUNT_CLINICS.sql]


def test_a_statement_needing_sqlalchemys_conversions_is_refused_when_it_is_built() -> None:
    # A typed JSON parameter would be sent to asyncpg unconverted: refused at import time.
    with pytest.raises(TypeError):
        sql.Statement(select(bindparam("payload", type_=JSONB)))
