"""The request boundary commits before the response leaves, and rolls back on error."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import select, text

from app.kit.db import Database, WriteSession
from app.kit.errors import NotFound
from app.models import Clinic
from app.settings import Settings
from tests.fixtures.app import client_for, running_app


def _probe_routes(app: FastAPI) -> None:
    @app.post("/_probe/commit-fails")
    async def commit_fails(session: WriteSession) -> dict[str, str]:
        session.add(Clinic(name="deferred", timezone="UTC"))
        # A deferred check that fails only at COMMIT: the boundary's commit raises after the
        # handler has returned its value.
        await session.execute(
            text(
                "CREATE TEMP TABLE probe (v int UNIQUE DEFERRABLE INITIALLY DEFERRED) "
                "ON COMMIT DROP"
            )
        )
        await session.execute(text("INSERT INTO probe VALUES (1), (1)"))
        return {"status": "created"}

    @app.post("/_probe/domain-error")
    async def domain_error(session: WriteSession) -> dict[str, str]:
        session.add(Clinic(name="rolled back", timezone="UTC"))
        await session.flush()
        raise NotFound("nothing here")


async def test_failed_commit_is_an_error_response_not_a_success(
    settings: Settings, database: Database
) -> None:
    async with running_app(settings) as app:
        _probe_routes(app)
        async with client_for(app) as client:
            response: httpx.Response = await client.post("/_probe/commit-fails")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal_error"
    async with database.reading() as session:
        assert (await session.execute(select(Clinic))).first() is None


async def test_domain_error_rolls_back(settings: Settings, database: Database) -> None:
    async with running_app(settings) as app:
        _probe_routes(app)
        async with client_for(app) as client:
            response = await client.post("/_probe/domain-error")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    async with database.reading() as session:
        assert (await session.execute(select(Clinic))).first() is None
