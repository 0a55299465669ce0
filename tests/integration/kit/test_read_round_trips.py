"""One round trip per read: read-only requests send PostgreSQL their statement and nothing else
(no BEGIN/ROLLBACK, no pre-ping), and the first statement that finds its pooled connection dead
runs once more on a fresh one.

Counted at the wire, by a proxy in front of PostgreSQL (`tests/fixtures/postgres_proxy.py`):
that sees what SQLAlchemy's cursor events do not (transaction control, pings, introspection).
The app under test has one pooled connection and no response cache, so every request computes,
and its second request of a kind reuses the statement the first one prepared on that
connection: what it sends then is what every such request sends on a warm connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import time, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select, text

from app.kit.db import Database, ReadSession, WriteSession
from app.models import Clinic, Role
from app.settings import Settings
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, local_instant, next_local_day
from tests.fixtures.postgres_proxy import PostgresProxy, Traffic, proxied_app
from tests.fixtures.problems import assert_problem


@asynccontextmanager
async def probed_app(
    settings: Settings, proxy: PostgresProxy, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with proxied_app(settings, proxy, **overrides) as (app, client):
        _probe_routes(app)
        yield app, client


def _probe_routes(app: FastAPI) -> None:
    @app.get("/_probe/read-sleep")
    async def read_sleep(session: ReadSession) -> dict[str, str]:
        await session.execute(text("SELECT pg_sleep(30)"))
        return {"status": "unreachable"}

    @app.post("/_probe/write")
    async def write(session: WriteSession) -> dict[str, int]:
        before = await session.scalar(select(func.count()).select_from(Clinic))
        session.add(Clinic(name="written once", timezone="UTC"))
        return {"before": int(before or 0)}


async def _twice(
    proxy: PostgresProxy, client: httpx.AsyncClient, url: str, **kwargs: Any
) -> tuple[httpx.Response, Traffic]:
    """The request once to warm the connection up, then again, recorded."""
    warm = await client.get(url, **kwargs)
    assert warm.status_code == 200, warm.text
    with proxy.recording() as traffic:
        response = await client.get(url, **kwargs)
    return response, traffic


async def test_a_cold_availability_a_listing_and_a_profile_send_one_statement_each(
    settings: Settings,
    database: Database,
    proxy: PostgresProxy,
    booking: Booking,
    accounts: Accounts,
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    booked = await booking.book(
        patient, provider, local_instant(day, time(9, 0), provider.timezone)
    )
    assert booked.status_code == 201, booked.text
    window = {"from": day.isoformat(), "to": (day + timedelta(days=6)).isoformat()}

    async with probed_app(settings, proxy) as (_, client):
        availability, availability_traffic = await _twice(
            proxy, client, f"/v1/providers/{provider.id}/availability", params=window
        )
        listing, listing_traffic = await _twice(
            proxy, client, "/v1/appointments", headers=patient.headers
        )
        profile, profile_traffic = await _twice(proxy, client, f"/v1/providers/{provider.id}")

    assert len(availability.json()["slots"]) > 0
    assert [item["id"] for item in listing.json()["items"]] == [booked.json()["id"]]
    assert profile.json()["id"] == str(provider.id)
    for traffic in (availability_traffic, listing_traffic, profile_traffic):
        assert len(traffic.statements) == 1, traffic.sql
        assert traffic.statements[0].kind == "E"  # the query itself: no BEGIN, ping, ROLLBACK
        assert traffic.round_trips == 1, traffic.sql


async def test_a_write_is_still_one_transaction_without_a_ping(
    settings: Settings, database: Database, proxy: PostgresProxy
) -> None:
    async with probed_app(settings, proxy) as (_, client):
        warm = await client.post("/_probe/write")
        with proxy.recording() as traffic:
            response = await client.post("/_probe/write")

    assert warm.status_code == response.status_code == 200
    assert response.json() == {"before": 1}
    assert [s.sql.split()[0].rstrip(";").upper() for s in traffic.statements] == [
        "BEGIN",
        "SELECT",
        "INSERT",
        "COMMIT",
    ], traffic.sql


async def test_a_read_transaction_keeps_its_settings_until_its_rollback(
    settings: Settings, database: Database, proxy: PostgresProxy
) -> None:
    async with probed_app(settings, proxy) as (app, _):
        db: Database = app.state.database
        async with db.reading() as session:  # connects (and introspects) outside the count
            await session.execute(text("SHOW statement_timeout"))
        with proxy.recording() as traffic:
            async with db.reading(transaction=True) as session:
                await session.execute(text("SELECT set_config('statement_timeout', '1234', true)"))
                inside = await session.scalar(text("SHOW statement_timeout"))
            async with db.reading() as session:
                after = await session.scalar(text("SHOW statement_timeout"))

    assert inside == "1234ms"
    assert after == "5s"  # the connection's own setting: the local one ended with the rollback
    # BEGIN, the two statements, ROLLBACK; then the autocommit read's statement alone.
    assert [s.kind for s in traffic.statements] == ["Q", "E", "E", "Q", "E"], traffic.sql
    assert traffic.sql[0].upper().startswith("BEGIN"), traffic.sql
    assert traffic.sql[3].upper().startswith("ROLLBACK"), traffic.sql


async def test_a_read_on_a_dead_pooled_connection_is_retried_on_a_fresh_one(
    settings: Settings, database: Database, proxy: PostgresProxy, booking: Booking
) -> None:
    provider = await booking.provider()
    async with probed_app(settings, proxy) as (_, client):
        warm = await client.get(f"/v1/providers/{provider.id}")
        connections = proxy.accepted
        await proxy.cut()  # the pooled connection dies while idle, as in a server restart
        with proxy.recording() as traffic:
            response = await client.get(f"/v1/providers/{provider.id}")
        again = await client.get(f"/v1/providers/{provider.id}")

    assert warm.status_code == response.status_code == again.status_code == 200
    assert response.json() == warm.json()
    assert proxy.accepted == connections + 1  # one fresh connection, kept for the next read
    profile = [sql for sql in traffic.sql if "FROM providers" in sql]
    assert len(profile) == 1, traffic.sql  # the statement reached PostgreSQL once


async def test_a_write_whose_first_statement_finds_its_connection_dead_is_retried(
    settings: Settings, database: Database, proxy: PostgresProxy
) -> None:
    async with probed_app(settings, proxy) as (_, client):
        warm = await client.post("/_probe/write")
        await proxy.cut()
        response = await client.post("/_probe/write")

    assert warm.status_code == response.status_code == 200, response.text
    assert response.json() == {"before": 1}
    async with database.reading() as session:
        written = await session.scalar(select(func.count()).select_from(Clinic))
    assert written == 2  # each request wrote its row exactly once


async def test_a_read_that_fails_for_another_reason_is_not_retried(
    settings: Settings, database: Database, proxy: PostgresProxy
) -> None:
    async with probed_app(settings, proxy, db_statement_timeout_ms=300) as (_, client):
        with proxy.recording() as traffic:
            response = await client.get("/_probe/read-sleep")

    assert_problem(response, 503, "service_unavailable")
    assert [sql for sql in traffic.sql if "pg_sleep" in sql] == ["SELECT pg_sleep(30)"]
