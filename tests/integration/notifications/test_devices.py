"""Push-token registration (DESIGN §4, POST /v1/me/devices): 201 for a new token, 200 for one
seen before (which then belongs to the caller), strict token and platform validation, and 401
without a bearer token."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import func, select

from app.kit.db import Database
from app.models import Device, Role
from app.notifications import repository
from tests.fixtures.app import Account, Accounts
from tests.fixtures.problems import assert_problem

DEVICES = "/v1/me/devices"
DEVICE_KEYS = {"id", "platform", "created_at", "last_seen_at"}


def fcm_token() -> str:
    """Shaped like an FCM registration token: opaque, URL-safe, ~160 characters."""
    return f"{uuid.uuid4().hex}:APA91b" + uuid.uuid4().hex * 4


async def register(
    client: httpx.AsyncClient, account: Account, token: Any, platform: Any = "android"
) -> httpx.Response:
    return await client.post(
        DEVICES, json={"token": token, "platform": platform}, headers=account.headers
    )


async def tokens_of(database: Database, user_id: uuid.UUID) -> list[str]:
    async with database.unit_of_work() as session:
        return await repository.device_tokens(session, user_id)


async def device_count(database: Database) -> int:
    async with database.unit_of_work() as session:
        return int(await session.scalar(select(func.count()).select_from(Device)) or 0)


def validation_locs(response: httpx.Response) -> list[list[Any]]:
    body = assert_problem(response, 422, "validation_error")
    return [error["loc"] for error in body["errors"]]


async def test_a_new_token_is_201_and_stored_for_the_caller(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    token = fcm_token()

    response = await register(client, patient, token, "ios")

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == DEVICE_KEYS
    uuid.UUID(body["id"])
    assert body["platform"] == "ios"
    created = datetime.fromisoformat(body["created_at"])
    assert created.tzinfo is not None
    assert datetime.fromisoformat(body["last_seen_at"]) == created
    assert token not in response.text  # the secret-ish token is never echoed back
    assert await tokens_of(database, patient.id) == [token]


async def test_every_role_may_register_its_own_devices(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    for role in (Role.PATIENT, Role.PROVIDER, Role.ADMIN):
        account = await accounts.create(role)
        first, second = fcm_token(), fcm_token()
        for token, platform in ((first, "android"), (second, "web")):
            response = await register(client, account, token, platform)
            assert response.status_code == 201, (role, response.text)
            assert response.json()["platform"] == platform
        assert await tokens_of(database, account.id) == [first, second]
    assert await device_count(database) == 6


async def test_the_same_token_again_is_200_and_the_same_device(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    token = fcm_token()
    first = await register(client, patient, token, "android")
    assert first.status_code == 201, first.text

    again = await register(client, patient, token, "web")

    assert again.status_code == 200, again.text
    before, after = first.json(), again.json()
    assert set(after) == DEVICE_KEYS
    assert after["id"] == before["id"]
    assert after["created_at"] == before["created_at"]
    assert after["platform"] == "web"  # the platform follows the latest registration
    assert datetime.fromisoformat(after["last_seen_at"]) > datetime.fromisoformat(
        before["last_seen_at"]
    )
    assert await tokens_of(database, patient.id) == [token]
    assert await device_count(database) == 1


async def test_a_token_registered_by_another_user_moves_to_the_caller(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    alice = await accounts.create(Role.PATIENT)
    bob = await accounts.create(Role.PATIENT)
    shared, alices_other = fcm_token(), fcm_token()
    first = await register(client, alice, shared)
    assert first.status_code == 201, first.text
    assert (await register(client, alice, alices_other)).status_code == 201

    moved = await register(client, bob, shared, "ios")

    assert moved.status_code == 200, moved.text
    assert moved.json()["id"] == first.json()["id"]
    assert moved.json()["platform"] == "ios"
    assert await tokens_of(database, bob.id) == [shared]
    assert await tokens_of(database, alice.id) == [alices_other]
    assert await device_count(database) == 2


async def test_whitespace_around_the_token_is_stripped(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    token = fcm_token()

    padded = await register(client, patient, f"  \t{token}\n ")
    assert padded.status_code == 201, padded.text
    plain = await register(client, patient, token)

    assert plain.status_code == 200, plain.text
    assert plain.json()["id"] == padded.json()["id"]
    assert await tokens_of(database, patient.id) == [token]


async def test_token_length_is_1_to_4096(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    longest, single = "t" * 4096, "x"

    assert (await register(client, patient, longest)).status_code == 201
    assert (await register(client, patient, single)).status_code == 201
    # The bound is on the stripped token: padding does not push a 4096-character token over.
    assert (await register(client, patient, f"  {longest}  ")).status_code == 200

    too_long = await register(client, patient, "u" * 4097)
    assert ["body", "token"] in validation_locs(too_long)
    assert await tokens_of(database, patient.id) == [longest, single]


async def test_invalid_tokens_are_422_and_store_nothing(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)

    for token in ("", "   \t\n", "abc def", "abc\tdef", "abc\ndef", "abc\u00a0def", 12345, None):
        response = await register(client, patient, token)
        assert validation_locs(response) == [["body", "token"]], repr(token)
    response = await register(client, patient, ["abc"])
    assert validation_locs(response) == [["body", "token"]]
    assert await device_count(database) == 0


async def test_a_token_with_a_nul_byte_is_422_not_500(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)

    response = await register(client, patient, "abc\u0000def")

    assert validation_locs(response) == [["body", "token"]]
    assert await device_count(database) == 0


async def test_invalid_platforms_are_422_and_store_nothing(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)

    for platform in ("blackberry", "Android", "IOS", " web", "", None, 1):
        response = await register(client, patient, fcm_token(), platform)
        assert validation_locs(response) == [["body", "platform"]], repr(platform)
    assert await device_count(database) == 0


async def test_missing_fields_are_422(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    cases: list[tuple[dict[str, str], set[str]]] = [
        ({}, {"token", "platform"}),
        ({"platform": "web"}, {"token"}),
        ({"token": "abc"}, {"platform"}),
    ]

    for payload, missing in cases:
        response = await client.post(DEVICES, json=payload, headers=patient.headers)
        locs = {tuple(loc) for loc in validation_locs(response)}
        assert locs == {("body", field) for field in missing}, payload
    no_body = await client.post(DEVICES, headers=patient.headers)
    assert_problem(no_body, 422, "validation_error")
    assert await device_count(database) == 0


async def test_concurrent_registrations_of_one_token_make_one_device(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    token = fcm_token()

    responses = await asyncio.gather(*(register(client, patient, token) for _ in range(8)))

    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await tokens_of(database, patient.id) == [token]


async def test_registering_requires_a_valid_bearer_token(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    payload = {"token": fcm_token(), "platform": "android"}

    for headers in (
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Basic {patient.access_token}"},
        {"Authorization": f"Bearer {patient.access_token}x"},
    ):
        response = await client.post(DEVICES, json=payload, headers=headers)
        assert_problem(response, 401, "unauthorized")
    assert await device_count(database) == 0
