"""`kit.sql` statements run on the asyncpg connection under a session, and keep the session's
guarantees: its transaction (committed or rolled back by the boundary, never by themselves),
SQLAlchemy's errors, and the engine's cursor events. A `Reader` runs them without a session,
on a connection of the same pool, with the same errors and events."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.kit import sql
from app.kit.db import Database, InstrumentedPool, violated_constraint
from app.models import Clinic
from tests.fixtures.app import count_statements
from tests.fixtures.worker import wait_for

_INSERT_CLINIC = sql.Statement(
    text("INSERT INTO clinics (id, name, timezone) VALUES (:id, :name, 'UTC') RETURNING id, name")
)
_COUNT_CLINICS = sql.Statement(text("SELECT count(*) FROM clinics"))
_BACKEND = sql.Statement(text("SELECT pg_backend_pid() AS pid"))
_SET_LOCAL = sql.Statement(text("SELECT set_config('carebook.probe', 'set', true)"))
_LOCAL = sql.Statement(text("SELECT current_setting('carebook.probe', true)"))
_DIVIDE = sql.Statement(text("SELECT 1 / CAST(:d AS integer)"))
_SLEEP = sql.Statement(text("SELECT pg_sleep(60)"))


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


async def test_a_read_before_begin_runs_outside_the_transaction_until_something_is_written(
    database: Database,
) -> None:
    async with database.unit_of_work() as session:
        # Nothing written yet: autocommit, so a local setting ends with its own statement.
        await sql.fetch(session, _SET_LOCAL, {}, before_begin=True)
        assert not await sql.fetchval(session, _LOCAL, {}, before_begin=True)
        before = await sql.fetchrow(session, _BACKEND, {}, before_begin=True)
        # The first statement without it begins the transaction, on the same connection.
        await sql.fetch(session, _INSERT_CLINIC, {"id": uuid.uuid4(), "name": "after the read"})
        inside = await sql.fetchrow(session, _BACKEND, {}, before_begin=True)
        # From then on it runs in the transaction: it sees the uncommitted row and the setting.
        assert await sql.fetchval(session, _COUNT_CLINICS, {}, before_begin=True) == 1
        await sql.fetch(session, _SET_LOCAL, {})
        assert await sql.fetchval(session, _LOCAL, {}, before_begin=True) == "set"
        assert await _clinics(database) == 0

    assert before is not None
    assert inside is not None
    assert before.pid == inside.pid
    assert await _clinics(database) == 1


def _pool(database: Database) -> InstrumentedPool:
    pool = database.primary.sync_engine.pool
    assert isinstance(pool, InstrumentedPool)
    return pool


async def test_a_reader_runs_in_autocommit_on_the_pool_and_the_listeners_see_it(
    database: Database,
) -> None:
    async with database.unit_of_work() as session:
        await sql.fetch(session, _INSERT_CLINIC, {"id": uuid.uuid4(), "name": "committed"})
    pool = _pool(database)

    with count_statements(database.primary) as log:
        async with database.reader(primary=True) as reader:
            assert isinstance(reader, sql.Reader)
            assert await sql.fetchval(reader, _COUNT_CLINICS, {}) == 1
            row = await sql.fetchrow(reader, _BACKEND, {})
            assert pool.checkedout() == 1  # one connection for the reader's statements
            await sql.fetch(reader, _SET_LOCAL, {})
            local = await sql.fetchval(reader, _LOCAL, {})
            again = await sql.fetchrow(reader, _BACKEND, {})

    assert row is not None
    assert again is not None
    assert row.pid == again.pid  # the same connection throughout
    assert not local  # no transaction: a local setting ends with its own statement
    assert log.statements == [
        _COUNT_CLINICS.sql,
        _BACKEND.sql,
        _SET_LOCAL.sql,
        _LOCAL.sql,
        _BACKEND.sql,
    ]
    assert pool.checkedout() == 0


async def test_a_readers_errors_are_sqlalchemys_and_its_connection_stays_usable(
    database: Database,
) -> None:
    async with database.reader(primary=True) as reader:
        with pytest.raises(DBAPIError) as raised:  # as a session's statement raises it
            await sql.fetchval(reader, _DIVIDE, {"d": 0})
        assert raised.value.orig.sqlstate == "22012"  # type: ignore[union-attr]  # division_by_zero
        assert not raised.value.connection_invalidated
        assert await sql.fetchval(reader, _DIVIDE, {"d": 1}) == 1


async def _pid_of_sleeper(database: Database) -> int:
    async with database.reader(primary=True) as reader:
        pid: int = await sql.fetchval(reader, _BACKEND, {})
        sleeping = asyncio.create_task(sql.fetch(reader, _SLEEP, {}))

        async def asleep() -> bool:
            async with database.reading(primary=True) as session:
                state = await session.scalar(
                    text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                )
            return bool(state == "active")

        await wait_for(asleep, what="the statement to run")
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
    return pid


async def test_a_reader_cancelled_mid_statement_does_not_return_its_connection(
    database: Database,
) -> None:
    pool = _pool(database)
    pid = await _pid_of_sleeper(database)

    assert pool.checkedout() == 0
    async with database.reader(primary=True) as reader:
        again = await sql.fetchrow(reader, _BACKEND, {})
    assert again is not None
    assert again.pid != pid  # the busy connection was dropped, not handed to the next read
    async with database.reading(primary=True) as session:
        await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_a_statement_needing_sqlalchemys_conversions_is_refused_when_it_is_built() -> None:
    # A typed JSON parameter would be sent to asyncpg unconverted: refused at import time.
    with pytest.raises(TypeError):
        sql.Statement(select(bindparam("payload", type_=JSONB)))
