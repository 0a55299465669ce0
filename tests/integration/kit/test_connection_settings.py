"""What every Carebook connection starts with (`kit.db.connection_settings`): generic plans, no
JIT, no parallel workers; the statistics rebuild alone takes parallel workers back, for its
own transaction. And the slot statements keep their per-slot probes under a generic plan."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]  # no stubs, no py.typed
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.analytics import service as analytics
from app.availability.repository import FREE_SLOTS_JSON_OF_PROVIDER, _search_statement
from app.kit import sql
from app.kit.db import Database, connection_settings
from app.settings import Settings

_NAMES = ("plan_cache_mode", "jit", "max_parallel_workers_per_gather")


async def _shown(database: Database) -> dict[str, str]:
    async with database.reading(primary=True) as session:
        return {name: str(await session.scalar(text(f"SHOW {name}"))) for name in _NAMES}


async def test_connections_use_generic_plans_without_jit_or_parallel_workers(
    database: Database,
) -> None:
    assert await _shown(database) == {
        "plan_cache_mode": "force_generic_plan",
        "jit": "off",
        "max_parallel_workers_per_gather": "0",
    }


async def test_the_statistics_rebuild_takes_parallel_workers_for_its_transaction_only(
    database: Database,
) -> None:
    async with database.unit_of_work() as session:
        today = date.today()
        await analytics.rebuild_chunk(session, today, today)
        inside = await session.scalar(text("SHOW max_parallel_workers_per_gather"))
    assert inside == "2"
    assert (await _shown(database))["max_parallel_workers_per_gather"] == "0"


def _literal(name: str) -> str:
    """A literal for one parameter of the slot statements (their values do not shape a generic
    plan; they only have to be of the right type)."""
    now = datetime.now(UTC)
    return {
        "from_date": f"'{date.today()}'",
        "to_date": f"'{date.today() + timedelta(days=6)}'",
        "earliest": f"'{now.isoformat()}'",
        "latest": f"'{(now + timedelta(days=90)).isoformat()}'",
        "ignore_appointment_id": "NULL",
        "provider_id": "'00000000-0000-0000-0000-000000000000'",
        "specialty": "'Dermatology'",
        "page_size": "21",
    }[name]


async def _generic_plan(settings: Settings, statement: sql.Statement) -> str:
    assert settings.database_url is not None
    url = make_url(settings.database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(
        url.render_as_string(hide_password=False),
        server_settings=connection_settings(settings, role="plan-test"),
    )
    try:
        await connection.execute(f"PREPARE probed AS {statement.sql}")
        arguments = ", ".join(_literal(name) for name in statement.names)
        rows = await connection.fetch(f"EXPLAIN (COSTS OFF) EXECUTE probed({arguments})")
        return "\n".join(str(row[0]) for row in rows)
    finally:
        await connection.close()


async def test_slot_statements_probe_each_slot_under_a_generic_plan(
    settings: Settings, database: Database
) -> None:
    # Without `OFFSET 0` PostgreSQL pulls the EXISTS up into anti-joins, which a generic plan
    # (a grid of unknown size) ran as hash joins over every active appointment.
    for statement in (
        FREE_SLOTS_JSON_OF_PROVIDER,
        _search_statement(specialty=True, clinic=False, after=False),
    ):
        plan = await _generic_plan(settings, statement)
        assert "Anti Join" not in plan, plan
        assert plan.count("SubPlan") >= 2, plan  # the appointment and the time-off probes
