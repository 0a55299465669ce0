"""`carebook stats rebuild [--from --to]`, run as a real subprocess on a database of its own."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from app.kit.db import Database
from app.kit.migrations import upgrade
from tests.fixtures.app import make_settings
from tests.integration.analytics.oracle import YEAR_END, YEAR_START, group_by, seed_random_visits
from tests.integration.cli.test_cli import assert_clean_failure, fresh_database, run_cli

if TYPE_CHECKING:
    from tests.fixtures.servers import TestServers


@pytest.fixture
async def cli_database(test_servers: TestServers) -> AsyncIterator[tuple[str, Database]]:
    async with fresh_database(test_servers) as url:
        await upgrade(url)
        database = Database.connect(make_settings(url, None), url)
        try:
            yield url, database
        finally:
            await database.dispose()


async def _stats(database: Database) -> dict[uuid.UUID, tuple[int, int, int, int]]:
    async with database.reading(primary=True) as session:
        rows = await session.execute(
            text(
                "SELECT c.id, coalesce(sum(s.booked), 0), coalesce(sum(s.completed), 0), "
                "coalesce(sum(s.cancelled), 0), coalesce(sum(s.no_show), 0) FROM clinics c "
                "LEFT JOIN clinic_daily_stats s ON s.clinic_id = c.id "
                "AND s.day BETWEEN :first AND :last GROUP BY c.id"
            ),
            {"first": YEAR_START, "last": YEAR_END},
        )
        return {row[0]: (int(row[1]), int(row[2]), int(row[3]), int(row[4])) for row in rows}


async def test_rebuild_all_then_a_range(cli_database: tuple[str, Database]) -> None:
    url, database = cli_database
    empty = await run_cli("stats", "rebuild", database_url=url)
    assert empty.returncode == 0, empty.describe()
    assert "nothing to rebuild" in empty.stdout

    await seed_random_visits(database, random.Random(3), per_provider=20, providers_per_clinic=1)
    result = await run_cli("stats", "rebuild", database_url=url)
    assert result.returncode == 0, result.describe()
    assert "Rebuilt clinic_daily_stats" in result.stdout
    assert await _stats(database) == await group_by(database, YEAR_START, YEAR_END)

    async with database.unit_of_work() as session:
        await session.execute(text("UPDATE clinic_daily_stats SET booked = booked + 50"))
    march = await run_cli(
        "stats", "rebuild", "--from", "2026-03-01", "--to", "2026-03-31", database_url=url
    )
    assert march.returncode == 0, march.describe()
    assert "2026-03-01 to 2026-03-31" in march.stdout
    assert "1 monthly chunks" in march.stdout
    async with database.reading(primary=True) as session:
        drifted = await session.scalar(
            text(
                "SELECT count(*) FROM clinic_daily_stats s WHERE s.booked >= 50 "
                "AND s.day BETWEEN :first AND :last"
            ),
            {"first": date(2026, 3, 1), "last": date(2026, 3, 31)},
        )
        elsewhere = await session.scalar(
            text("SELECT count(*) FROM clinic_daily_stats WHERE booked >= 50")
        )
    assert drifted == 0
    assert (elsewhere or 0) > 0


@pytest.mark.parametrize(
    "args",
    [
        ("--from", "2026-03-02", "--to", "2026-03-01"),
        ("--from", "March"),
        ("--to", "2026-02-30"),
    ],
)
async def test_bad_dates_fail_cleanly(
    cli_database: tuple[str, Database], args: tuple[str, ...]
) -> None:
    url, _ = cli_database
    assert_clean_failure(await run_cli("stats", "rebuild", *args, database_url=url))


async def test_refuses_an_unmigrated_database(test_servers: TestServers) -> None:
    async with fresh_database(test_servers) as url:
        result = await run_cli("stats", "rebuild", database_url=url)
    assert_clean_failure(result, code=1)
    assert "carebook migrate" in result.stderr
