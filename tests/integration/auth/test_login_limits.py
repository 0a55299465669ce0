"""Login limits that keep guessing slow without letting a stranger lock an owner out (issue 12,
ADR 0007): per email and client address, per email and known device, a looser ceiling per
email across clients without a device token, per address; refresh tokens are never limited
by any of them."""

from __future__ import annotations

import uuid

import httpx
import pytest

from app.auth.login_limits import DEVICE_HEADER, DeviceTokens
from app.kit.db import Database
from app.settings import Settings
from tests.fixtures.app import TEST_PASSWORD, make_settings
from tests.fixtures.problems import assert_problem
from tests.integration.kit.test_rate_limits import (
    assert_rate_limited,
    client_at,
    create_user,
    default,
    limited_app,
    login,
    new_address,
)

WRONG = "not the password"


def new_email() -> str:
    return f"owner-{uuid.uuid4().hex[:10]}@example.com"


async def login_from(
    client: httpx.AsyncClient, email: str, password: str, device: str | None = None
) -> httpx.Response:
    if device is None:
        return await login(client, email, password)
    return await client.post(
        "/v1/auth/token",
        json={"email": email, "password": password},
        headers={DEVICE_HEADER: device},
    )


async def test_a_strangers_guesses_from_elsewhere_do_not_lock_the_owner_out(
    settings: Settings, database: Database
) -> None:
    """With the shipped defaults: ten wrong passwords from one address limit that address, for
    that email, and nobody else."""
    per_minute = default("rate_limit_login_per_minute")
    async with limited_app(
        settings,
        rate_limit_login_per_minute=per_minute,
        rate_limit_login_email_per_hour=default("rate_limit_login_email_per_hour"),
    ) as app:
        email = new_email()
        await create_user(app, email)
        async with client_at(app, new_address()) as stranger:
            for _ in range(per_minute):
                assert_problem(await login(stranger, email, WRONG), 401, "invalid_credentials")
            # The same client guessing on is limited, even when it tries the right password.
            refused = await login(stranger, email, TEST_PASSWORD)
            assert_rate_limited(refused, rate=per_minute / 60, limit=per_minute)
            assert DEVICE_HEADER.lower() not in {name.lower() for name in refused.headers}

        async with client_at(app, new_address()) as owner:
            signed_in = await login(owner, email, TEST_PASSWORD)
            assert signed_in.status_code == 200, signed_in.text
            assert signed_in.headers[DEVICE_HEADER]


async def test_the_ceiling_applies_across_clients_but_never_to_a_known_device(
    settings: Settings, database: Database
) -> None:
    per_minute, ceiling = 3, 5
    async with limited_app(
        settings,
        rate_limit_login_per_minute=per_minute,
        rate_limit_login_email_per_hour=ceiling,
    ) as app:
        email = new_email()
        await create_user(app, email)
        async with client_at(app, new_address()) as owner:
            first = await login(owner, email, TEST_PASSWORD)  # 1 of the ceiling's 5
            assert first.status_code == 200, first.text
            device = first.headers[DEVICE_HEADER]
            refresh_token = first.json()["refresh_token"]

        # Strangers spread their guesses over addresses: each address is under its own limit,
        # together they reach the email's ceiling.
        for guesses in (per_minute, ceiling - 1 - per_minute):
            async with client_at(app, new_address()) as stranger:
                for _ in range(guesses):
                    assert_problem(await login(stranger, email, WRONG), 401, "invalid_credentials")
        async with client_at(app, new_address()) as stranger:
            refused = await login(stranger, email, TEST_PASSWORD)
            assert_rate_limited(refused, rate=ceiling / 3600, limit=ceiling)

        async with client_at(app, new_address()) as owner_elsewhere:
            # A client without a device token is under the ceiling too: the price of the limit.
            assert (await login(owner_elsewhere, email, TEST_PASSWORD)).status_code == 429
            # The device the owner logged in from is not.
            again = await login_from(owner_elsewhere, email, TEST_PASSWORD, device)
            assert again.status_code == 200, again.text
            assert again.headers[DEVICE_HEADER] != device, "a fresh token with every login"
            # A refresh token is not limited by any login budget.
            refreshed = await owner_elsewhere.post(
                "/v1/auth/refresh", json={"refresh_token": refresh_token}
            )
            assert refreshed.status_code == 200, refreshed.text


async def test_a_device_token_gives_its_own_limited_budget_for_its_email_only(
    settings: Settings, database: Database
) -> None:
    per_minute = 3
    async with (
        limited_app(settings, rate_limit_login_per_minute=per_minute) as app,
        client_at(app, new_address()) as client,
    ):
        email, other = new_email(), new_email()
        await create_user(app, email)
        await create_user(app, other)
        device = (await login(client, email, TEST_PASSWORD)).headers[DEVICE_HEADER]

        # A device guessing is still limited, on a budget of its own ...
        for _ in range(per_minute):
            assert_problem(
                await login_from(client, email, WRONG, device), 401, "invalid_credentials"
            )
        refused = await login_from(client, email, TEST_PASSWORD, device)
        assert_rate_limited(refused, rate=per_minute / 60, limit=per_minute)
        # ... that is not the address's: one login of the address's was spent above.
        assert (await login(client, email, TEST_PASSWORD)).status_code == 200

        # For another email the token is nobody's: that email's address budget applies.
        for _ in range(per_minute):
            response = await login_from(client, other, WRONG, device)
            assert_problem(response, 401, "invalid_credentials")
        assert (await login_from(client, other, TEST_PASSWORD, device)).status_code == 429
        # So does a token that was tampered with or made up.
        for forged in (device[:-2] + "AA", "d1.1.x.y", "garbage"):
            assert (await login_from(client, other, TEST_PASSWORD, forged)).status_code == 429


async def test_an_overlong_device_header_is_a_validation_error(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await login_from(client, new_email(), WRONG, "x" * 300)
    assert_problem(response, 422, "validation_error")


# --- the tokens themselves --------------------------------------------------------------------


@pytest.fixture
def devices(settings: Settings) -> DeviceTokens:
    return DeviceTokens(settings)


def test_a_token_names_a_device_of_one_email_case_insensitively(devices: DeviceTokens) -> None:
    token = devices.issue("Owner@Example.com")
    device = devices.device_of(token, "owner@example.COM")
    assert device is not None
    assert devices.device_of(token, "someone@example.com") is None
    assert devices.device_of(devices.issue("owner@example.com"), "owner@example.com") != device


def test_a_token_expires_with_the_refresh_token_lifetime(
    devices: DeviceTokens, settings: Settings
) -> None:
    issued = 1_700_000_000
    token = devices.issue("a@example.com", now=issued)
    lifetime = settings.refresh_token_days * 86_400
    assert devices.device_of(token, "a@example.com", now=issued + lifetime - 1) is not None
    assert devices.device_of(token, "a@example.com", now=issued + lifetime) is None


def test_a_token_is_worthless_under_another_secret(
    devices: DeviceTokens, settings: Settings
) -> None:
    token = devices.issue("a@example.com")
    other = DeviceTokens(
        make_settings(settings.database_url, settings.redis_url, jwt_secret="o" * 48)
    )
    assert other.device_of(token, "a@example.com") is None
    version, issued, nonce, sig = token.split(".")
    for changed in (f"{version}.{int(issued) + 1}.{nonce}.{sig}", f"{version}.{issued}.x.{sig}"):
        assert devices.device_of(changed, "a@example.com") is None
