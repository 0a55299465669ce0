"""Reads that tolerate lag go to the replica; availability and the booking path never do (F21).

The "replica" is a second connection string to the test database with its own
application_name, so the two engines are distinguishable both in the app and in PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.kit.db import Database
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Accounts, client_for, count_statements, make_settings, running_app
from tests.fixtures.booking import Booking, local_instant, next_local_day

REPLICA_NAME = "carebook-replica-test"


@pytest.fixture
async def routed(settings: Settings, database: Database) -> AsyncIterator[FastAPI]:
    assert settings.database_url is not None
    replica_url = (
        make_url(settings.database_url)
        .update_query_dict({"application_name": REPLICA_NAME})
        .render_as_string(hide_password=False)
    )
    replicated = make_settings(
        settings.database_url,
        settings.redis_url,
        database_replica_url=replica_url,
        rate_limit_enabled=False,
    )
    async with running_app(replicated) as app:
        yield app


async def test_replica_engine_is_the_second_connection(routed: FastAPI) -> None:
    database: Database = routed.state.database
    assert database.replica is not None
    async with database.replica.connect() as connection:
        name = await connection.scalar(text("SELECT current_setting('application_name')"))
    assert name == REPLICA_NAME
    async with database.primary.connect() as connection:
        name = await connection.scalar(text("SELECT current_setting('application_name')"))
    assert name == "carebook-primary"


async def _engines_used(
    app: FastAPI, client: httpx.AsyncClient, method: str, url: str, **kwargs: object
) -> tuple[int, int, httpx.Response]:
    database: Database = app.state.database
    assert database.replica is not None
    with (
        count_statements(database.primary) as primary,
        count_statements(database.replica) as replica,
    ):
        response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    return primary.count, replica.count, response


async def test_lag_tolerant_reads_go_to_the_replica_and_the_booking_path_does_not(
    routed: FastAPI, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(9, 0), provider.timezone)
    async with client_for(routed) as client:
        for url in (
            "/v1/clinics",
            "/v1/specialties",
            "/v1/providers",
            f"/v1/providers/{provider.id}",
        ):
            on_primary, on_replica, response = await _engines_used(routed, client, "GET", url)
            assert response.status_code == 200, (url, response.text)
            assert (on_primary, on_replica) == (0, 1), url

        past = datetime.now(UTC) - timedelta(days=1)
        on_primary, on_replica, response = await _engines_used(
            routed,
            client,
            "GET",
            "/v1/appointments",
            params={"to": past.isoformat()},
            headers=patient.headers,
        )
        assert response.status_code == 200
        assert (on_primary, on_replica) == (0, 1)

        availability = f"/v1/providers/{provider.id}/availability"
        on_primary, on_replica, response = await _engines_used(
            routed,
            client,
            "GET",
            availability,
            params={"from": day.isoformat(), "to": day.isoformat()},
        )
        assert response.status_code == 200
        assert on_replica == 0
        assert on_primary == 1

        on_primary, on_replica, response = await _engines_used(
            routed,
            client,
            "POST",
            "/v1/appointments",
            json={"provider_id": str(provider.id), "start": start.isoformat()},
            headers={**patient.headers, "Idempotency-Key": "replica-test"},
        )
        assert response.status_code == 201, response.text
        assert on_replica == 0
        assert on_primary > 0

        for params in ({}, {"to": (datetime.now(UTC) + timedelta(days=30)).isoformat()}):
            on_primary, on_replica, response = await _engines_used(
                routed, client, "GET", "/v1/appointments", params=params, headers=patient.headers
            )
            assert response.status_code == 200
            assert len(response.json()["items"]) == 1
            assert (on_primary, on_replica) == (1, 0)
