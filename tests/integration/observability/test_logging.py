"""Log lines as the JSON formatter writes them: request ids, user ids, the access log, slow
statements, unhandled errors, and nothing secret or personal."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.kit.db import Database, WriteSession
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Accounts, client_for, make_settings, running_app
from tests.fixtures.observability import json_logs
from tests.fixtures.problems import PROBLEM

SECRET = "hunter2-parameter@example.com"
LEAKY = "kaboom: postgresql://admin:hunter2@db"


def _probe_routes(app: FastAPI) -> None:
    @app.get("/_probe/slow")
    async def slow(session: WriteSession) -> dict[str, str]:
        value = await session.scalar(text("SELECT :secret FROM pg_sleep(0.15)"), {"secret": SECRET})
        return {"echo": "ok" if value == SECRET else "no"}

    @app.get("/_probe/crash")
    async def crash() -> dict[str, str]:
        raise RuntimeError(LEAKY)


async def test_access_log_line_carries_the_request_id_of_the_response(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)
    with json_logs() as logs:
        mine = await client.get("/v1/me", headers={**patient.headers, "X-Request-ID": "rq-42"})
        generated = await client.get("/v1/specialties")
        anonymous = await client.get("/v1/me")

    assert mine.headers["x-request-id"] == "rq-42"
    (line,) = logs.where(logger="carebook.access", request_id="rq-42")
    assert line["message"] == "request"
    assert line["level"] == "info"
    assert line["timestamp"].endswith("+00:00")
    assert (line["method"], line["route"], line["status"]) == ("GET", "/v1/me", 200)
    assert isinstance(line["duration_ms"], float)
    assert line["user_id"] == str(patient.id)

    for response, route in ((generated, "/v1/specialties"), (anonymous, "/v1/me")):
        request_id = response.headers["x-request-id"]
        (access,) = logs.where(logger="carebook.access", request_id=request_id)
        assert access["route"] == route
        assert access["status"] == response.status_code
        # The previous request's user does not leak into an anonymous one.
        assert "user_id" not in access
        assert "trace_id" not in access  # tracing is off by default


async def test_a_slow_statement_is_logged_with_its_duration_and_without_parameters(
    settings: Settings, database: Database
) -> None:
    traced = make_settings(settings.database_url, settings.redis_url, slow_statement_ms=100)
    async with running_app(traced) as app, client_for(app) as client:
        _probe_routes(app)
        with json_logs() as logs:
            response = await client.get("/_probe/slow")

    assert response.json() == {"echo": "ok"}
    request_id = response.headers["x-request-id"]
    (slow,) = [
        line
        for line in logs.where(logger="carebook.db.slow", request_id=request_id)
        if "pg_sleep" in line["statement"]
    ]
    assert slow["level"] == "warning"
    assert slow["message"] == "slow statement"
    assert slow["engine"] == "primary"
    assert slow["duration_ms"] >= 100
    assert "pg_sleep(0.15)" in slow["statement"]
    assert SECRET not in logs.raw


async def test_an_unhandled_exception_is_logged_with_its_trace_and_answered_a_bare_500(
    settings: Settings, database: Database
) -> None:
    async with running_app(settings) as app, client_for(app) as client:
        _probe_routes(app)
        with json_logs() as logs:
            response = await client.get("/_probe/crash", headers={"X-Request-ID": "crash-1"})

    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["x-request-id"] == "crash-1"
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail", "code", "request_id"}
    assert (body["status"], body["code"], body["request_id"]) == (500, "internal_error", "crash-1")
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text

    (error,) = logs.where(logger="carebook.errors", request_id="crash-1")
    assert error["level"] == "error"
    assert error["message"] == "unhandled error"
    assert error["exception"].startswith("Traceback")
    assert "RuntimeError" in error["exception"]
    (access,) = logs.where(logger="carebook.access", request_id="crash-1")
    assert (access["route"], access["status"]) == ("/_probe/crash", 500)


async def test_no_secrets_or_personal_data_in_logs(client: httpx.AsyncClient) -> None:
    email, password = "Private.Person@example.com", "a very private passphrase"
    with json_logs() as logs:
        registered = await client.post(
            "/v1/auth/register",
            json={"email": email, "password": password, "full_name": "Private Person"},
        )
        wrong = await client.post(
            "/v1/auth/token", json={"email": email, "password": "not the passphrase"}
        )
        tokens = await client.post("/v1/auth/token", json={"email": email, "password": password})
        pair = tokens.json()
        refreshed = await client.post(
            "/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        bearer = {"Authorization": f"Bearer {pair['access_token']}"}
        me = await client.get("/v1/me", headers=bearer)
        invalid = await client.get("/v1/me", headers={"Authorization": "Bearer forged.token.x"})

    assert [registered.status_code, wrong.status_code, tokens.status_code] == [201, 401, 200]
    assert [refreshed.status_code, me.status_code, invalid.status_code] == [200, 200, 401]
    assert len(logs.where(logger="carebook.access")) == 6
    raw = logs.raw.lower()
    for secret in (
        email,
        password,
        "not the passphrase",
        "private person",
        pair["access_token"],
        pair["refresh_token"],
        refreshed.json()["refresh_token"],
        "forged.token.x",
        "bearer",
    ):
        assert secret.lower() not in raw, secret
