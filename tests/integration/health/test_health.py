"""Liveness never depends on anything; readiness follows the database and reports Redis."""

from __future__ import annotations

import httpx

from app.kit.resilience import breaker_key
from app.settings import Settings
from tests.fixtures.app import client_for, make_settings, running_app

DEAD_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:1/x"
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


async def test_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers.get("x-request-id")


async def test_ready_with_everything_up(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["database"] == "ok"
    assert body["redis"] == "ok"
    assert body["status"] == "ok"
    # Nothing configured for the third parties: reported, and no reason to be unready.
    assert body["integrations"] == {"videosdk": "disabled", "fcm": "disabled"}


async def test_ready_reports_the_breaker_state_workers_published(settings: Settings) -> None:
    configured = make_settings(
        settings.database_url,
        settings.redis_url,
        videosdk_base_url="http://127.0.0.1:1",
        fcm_base_url="http://127.0.0.1:1",
        fcm_project_id="p",
    )
    async with running_app(configured) as app, client_for(app) as client:
        before = (await client.get("/health/ready")).json()["integrations"]
        await app.state.redis.set(breaker_key("videosdk"), "open")
        await app.state.redis.set(breaker_key("fcm"), "nonsense")
        after = await client.get("/health/ready")
        await app.state.redis.delete(breaker_key("videosdk"), breaker_key("fcm"))
    assert before == {"videosdk": "unknown", "fcm": "unknown"}  # no worker reported yet
    assert after.status_code == 200  # an open breaker degrades follow-ups, not the API
    assert after.json()["integrations"] == {"videosdk": "open", "fcm": "unknown"}


async def test_ready_with_redis_down_is_degraded_but_ready(settings: Settings) -> None:
    degraded = make_settings(settings.database_url, DEAD_REDIS_URL)
    async with running_app(degraded) as app, client_for(app) as client:
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == "ok"
    assert ready.json()["redis"] == "degraded"
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}


async def test_ready_without_redis_configured_is_degraded_but_ready(settings: Settings) -> None:
    no_redis = make_settings(settings.database_url, None)
    async with running_app(no_redis) as app, client_for(app) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == "ok"
    assert ready.json()["redis"] == "degraded"


async def test_ready_with_database_down_is_503(settings: Settings) -> None:
    dead = make_settings(DEAD_DATABASE_URL, settings.redis_url)
    async with running_app(dead) as app, client_for(app) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["database"] == "down"
    assert body["redis"] == "ok"
    assert body["status"] != "ok"
    assert "127.0.0.1" not in ready.text


async def test_live_does_not_depend_on_the_database_or_redis(settings: Settings) -> None:
    dead = make_settings(DEAD_DATABASE_URL, DEAD_REDIS_URL)
    async with running_app(dead) as app, client_for(app) as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        live_again = await client.get("/health/live")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    assert ready.status_code == 503
    assert ready.json()["database"] == "down"
    assert ready.json()["redis"] == "degraded"
    assert live_again.status_code == 200


async def test_a_dead_sibling_app_does_not_disturb_the_healthy_one(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    dead = make_settings(DEAD_DATABASE_URL, settings.redis_url)
    async with running_app(dead) as app, client_for(app) as dead_client:
        assert (await dead_client.get("/health/ready")).status_code == 503
        assert (await client.get("/health/ready")).status_code == 200
