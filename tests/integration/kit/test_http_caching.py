"""Conditional GETs, deliberate Cache-Control and gzip (audit F20)."""

from __future__ import annotations

from datetime import time, timedelta

import httpx
import pytest

from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, local_instant, next_local_day


async def _revalidate(client: httpx.AsyncClient, url: str, **params: str) -> str:
    first = await client.get(url, params=params)
    assert first.status_code == 200, first.text
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')  # strong
    again = await client.get(url, params=params, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    weak = await client.get(url, params=params, headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status_code == 304
    stale = await client.get(url, params=params, headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200
    return etag


async def test_availability_etag_changes_with_a_booking(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    day = next_local_day(provider.timezone)
    url = f"/v1/providers/{provider.id}/availability"
    window = {"from": day.isoformat(), "to": day.isoformat()}
    before = await _revalidate(client, url, **window)
    response = await client.get(url, params=window)
    assert response.headers["cache-control"] == "public, no-cache"

    booked = await booking.book(
        await accounts.create(Role.PATIENT),
        provider,
        local_instant(day, time(9, 0), provider.timezone),
    )
    assert booked.status_code == 201
    changed = await client.get(url, params=window, headers={"If-None-Match": before})
    assert changed.status_code == 200
    assert changed.headers["etag"] != before


async def test_profile_and_catalogue_revalidate(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    await _revalidate(client, f"/v1/providers/{provider.id}")
    for url in ("/v1/clinics", "/v1/specialties", "/v1/providers"):
        etag = await _revalidate(client, url)
        response = await client.get(url)
        assert response.headers["cache-control"] == "public, max-age=60"
        assert response.headers["etag"] == etag
    admin = await accounts.create(Role.ADMIN)
    clinics_etag = (await client.get("/v1/clinics")).headers["etag"]
    created = await client.post(
        "/v1/clinics", json={"name": "Eastside", "timezone": "Asia/Tokyo"}, headers=admin.headers
    )
    assert created.status_code == 201
    assert (await client.get("/v1/clinics")).headers["etag"] != clinics_etag


@pytest.mark.parametrize("path", ["/v1/me", "/v1/appointments"])
async def test_private_data_is_never_stored(
    path: str, client: httpx.AsyncClient, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)
    response = await client.get(path, headers=patient.headers)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "private, no-store"
    assert "etag" not in response.headers


async def test_errors_and_writes_are_not_cacheable(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing-here")
    assert missing.headers["cache-control"] == "no-store"
    login = await client.post("/v1/auth/token", json={"email": "x@example.com", "password": "x"})
    assert login.headers["cache-control"] == "no-store"


async def test_large_responses_are_gzipped_small_ones_not(
    client: httpx.AsyncClient, booking: Booking
) -> None:
    provider = await booking.provider(slot_minutes=15)
    day = next_local_day(provider.timezone)
    url = f"/v1/providers/{provider.id}/availability"
    params = {"from": day.isoformat(), "to": (day + timedelta(days=30)).isoformat()}
    large = await client.get(url, params=params, headers={"Accept-Encoding": "gzip"})
    assert large.status_code == 200
    assert large.headers["content-encoding"] == "gzip"
    assert int(large.headers["content-length"]) < len(large.content) / 4  # decoded by httpx
    assert "Accept-Encoding" in large.headers["vary"]
    assert large.json()["slots"]
    small = await client.get("/health/live", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    plain = await client.get(url, params=params, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.json() == large.json()
