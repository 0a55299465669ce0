"""Per-connection limits: a statement past `statement_timeout`, or a lock wait past
`lock_timeout`, is cancelled by PostgreSQL and answered 503 problem+json."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import text

from app.kit.db import Database, WriteSession
from app.settings import Settings
from tests.fixtures.app import client_for, make_settings, running_app
from tests.fixtures.observability import json_logs
from tests.fixtures.problems import assert_problem

LOCK_KEY = 774_211


def _probe_routes(app: FastAPI) -> None:
    # Test-only routes that really run a slow statement and a lock wait through the app's own
    # write session (the production dependency, engine and error handlers).
    @app.get("/_probe/sleep")
    async def sleep(session: WriteSession) -> dict[str, str]:
        await session.execute(text("SELECT pg_sleep(30)"))
        return {"status": "unreachable"}

    @app.get("/_probe/lock")
    async def lock(session: WriteSession) -> dict[str, str]:
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        return {"status": "locked"}

    @app.get("/_probe/settings")
    async def show(session: WriteSession) -> dict[str, str]:
        names = (
            "statement_timeout",
            "lock_timeout",
            "idle_in_transaction_session_timeout",
            "application_name",
            "TimeZone",
        )
        return {name: str(await session.scalar(text(f"SHOW {name}"))) for name in names}


def limited(settings: Settings) -> Settings:
    return make_settings(
        settings.database_url,
        settings.redis_url,
        db_statement_timeout_ms=300,
        db_lock_timeout_ms=200,
        db_application_name="obs-test",
    )


async def test_a_statement_past_the_statement_timeout_is_cancelled_and_answered_503(
    settings: Settings, database: Database
) -> None:
    async with running_app(limited(settings)) as app, client_for(app) as client:
        _probe_routes(app)
        with json_logs() as logs:
            response = await client.get("/_probe/sleep")
        after = await client.get("/_probe/settings")  # the pool still serves

        async with database.reading() as session:
            still_running = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
                )
            )

    body = assert_problem(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == "1"
    assert set(body) == {"type", "title", "status", "detail", "code", "request_id"}
    assert "pg_sleep" not in response.text
    assert still_running == 0  # PostgreSQL cancelled it, nothing is left behind
    assert after.status_code == 200
    (warning,) = logs.where(logger="carebook.errors", message="database unavailable")
    assert warning["sqlstate"] == "57014"  # query_canceled
    assert warning["request_id"] == response.headers["x-request-id"]


async def test_a_lock_wait_past_the_lock_timeout_is_answered_503(
    settings: Settings, database: Database
) -> None:
    async with running_app(limited(settings)) as app, client_for(app) as client:
        _probe_routes(app)
        async with database.primary.begin() as holder:
            await holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            with json_logs() as logs:
                blocked = await client.get("/_probe/lock")
        free = await client.get("/_probe/lock")

    assert_problem(blocked, 503, "service_unavailable")
    (warning,) = logs.where(logger="carebook.errors", message="database unavailable")
    assert warning["sqlstate"] == "55P03"  # lock_not_available
    assert free.json() == {"status": "locked"}


async def test_every_connection_gets_the_configured_limits(
    settings: Settings, database: Database
) -> None:
    configured = limited(settings)
    async with running_app(configured) as app, client_for(app) as client:
        _probe_routes(app)
        shown = (await client.get("/_probe/settings")).json()
        pool = app.state.database.primary.sync_engine.pool

    assert shown == {
        "statement_timeout": "300ms",
        "lock_timeout": "200ms",
        "idle_in_transaction_session_timeout": "1min",
        "application_name": "obs-test-primary",
        "TimeZone": "UTC",
    }
    assert pool.size() == configured.db_pool_size
    assert pool.timeout() == configured.db_pool_timeout_seconds
    assert pool._recycle == configured.db_pool_recycle_seconds
    assert pool._pre_ping is configured.db_pool_pre_ping
