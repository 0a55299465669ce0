"""Auth flows over HTTP (DESIGN §4): registration, login, refresh rotation and reuse detection,
logout, bearer authentication and operator creation."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
from sqlalchemy import select, update

from app.kit.db import Database
from app.models import Clinic, RefreshToken, Role, User
from app.settings import Settings
from tests.fixtures.app import TEST_PASSWORD, Accounts
from tests.fixtures.problems import PROBLEM, assert_problem


def assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(
    client: httpx.AsyncClient,
    email: str,
    password: str = TEST_PASSWORD,
    full_name: str = "Ada Lovelace",
) -> httpx.Response:
    return await client.post(
        "/v1/auth/register",
        json={"email": email, "password": password, "full_name": full_name},
    )


async def login(
    client: httpx.AsyncClient, email: str, password: str = TEST_PASSWORD
) -> httpx.Response:
    return await client.post("/v1/auth/token", json={"email": email, "password": password})


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/v1/auth/refresh", json={"refresh_token": refresh_token})


async def make_clinic(database: Database, name: str = "Northside Clinic") -> uuid.UUID:
    async with database.unit_of_work() as session:
        clinic = Clinic(name=name, timezone="Europe/Berlin")
        session.add(clinic)
        await session.flush()
        return clinic.id


def craft_token(settings: Settings, **overrides: Any) -> str:
    """A token shaped like ours, signed with our secret, with some claims replaced/removed."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(uuid.uuid4()),
        "role": "patient",
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=15)).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


# --- registration -----------------------------------------------------------------------------


async def test_register_creates_a_patient_without_exposing_the_hash(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await register(client, "grace@example.com", full_name="Grace Hopper")
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["email"] == "grace@example.com"
    assert body["full_name"] == "Grace Hopper"
    assert body["role"] == "patient"
    assert body["clinic_id"] is None
    assert body["is_active"] is True
    assert isinstance(body["id"], str)
    user_id = uuid.UUID(body["id"])
    for secret_key in ("password", "password_hash"):
        assert secret_key not in body
    assert "argon2" not in response.text
    assert TEST_PASSWORD not in response.text

    async with database.reading() as session:
        user = await session.get(User, user_id)
        assert user is not None
        assert user.role == "patient"
        assert user.password_hash.startswith("$argon2id$")


async def test_register_strips_full_name(client: httpx.AsyncClient) -> None:
    response = await register(client, "strip@example.com", full_name="  Ada  ")
    assert response.status_code == 201, response.text
    assert response.json()["full_name"] == "Ada"


async def test_register_duplicate_email_is_case_insensitive(client: httpx.AsyncClient) -> None:
    first = await register(client, "Grace@example.com")
    assert first.status_code == 201, first.text

    for variant in ("Grace@example.com", "grace@example.com", "GRACE@EXAMPLE.COM"):
        again = await register(client, variant, password="another-password")
        assert_problem(again, 409, "email_taken")


async def test_register_cannot_choose_its_role(
    client: httpx.AsyncClient, database: Database
) -> None:
    clinic_id = await make_clinic(database)
    response = await client.post(
        "/v1/auth/register",
        json={
            "email": "sneaky@example.com",
            "password": TEST_PASSWORD,
            "full_name": "Sneaky",
            "role": "admin",
            "clinic_id": str(clinic_id),
            "is_active": False,
        },
    )
    assert response.status_code in {201, 422}, response.text
    if response.status_code == 201:
        assert response.json()["role"] == "patient"
        assert response.json()["clinic_id"] is None
        assert response.json()["is_active"] is True
    async with database.reading() as session:
        roles = (await session.execute(select(User.role))).scalars().all()
    assert "admin" not in roles


async def test_concurrent_registrations_of_one_email_create_one_account(
    client: httpx.AsyncClient, database: Database
) -> None:
    variants = ["race@example.com", "Race@example.com", "RACE@example.com", "rAce@example.com"]
    responses = await asyncio.gather(*(register(client, email) for email in variants))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201, 409, 409, 409], [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "email_taken")
    async with database.reading() as session:
        emails = (await session.execute(select(User.email))).scalars().all()
    assert len(emails) == 1


async def test_register_duplicate_does_not_change_the_existing_account(
    client: httpx.AsyncClient, database: Database
) -> None:
    assert (await register(client, "keep@example.com")).status_code == 201
    assert_problem(await register(client, "KEEP@example.com", "other-pass-123"), 409, "email_taken")

    assert (await login(client, "keep@example.com", "other-pass-123")).status_code == 401
    assert (await login(client, "keep@example.com")).status_code == 200
    async with database.reading() as session:
        rows = (await session.execute(select(User))).scalars().all()
    assert len(rows) == 1


async def test_register_refuses_short_password(client: httpx.AsyncClient) -> None:
    response = await register(client, "short@example.com", password="Zq7!x")
    body = assert_problem(response, 422, "validation_error")
    assert any(err["loc"] == ["body", "password"] for err in body["errors"])
    assert "Zq7!x" not in response.text


async def test_password_is_hashed_with_argon2id_parameters(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await register(client, "hash@example.com")
    assert response.status_code == 201, response.text
    async with database.reading() as session:
        stored = await session.scalar(
            select(User.password_hash).where(User.id == uuid.UUID(response.json()["id"]))
        )
    assert stored is not None
    match = re.match(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$", stored)
    assert match is not None, stored
    assert (int(match[1]), int(match[2]), int(match[3])) == (19456, 2, 1)


# --- login ------------------------------------------------------------------------------------


async def test_login_returns_a_token_pair(client: httpx.AsyncClient) -> None:
    assert (await register(client, "pair@example.com")).status_code == 201
    response = await login(client, "PAIR@example.com")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert body["access_token"] != body["refresh_token"]
    me = await client.get("/v1/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["email"] == "pair@example.com"


async def test_wrong_password_and_unknown_email_look_the_same(client: httpx.AsyncClient) -> None:
    assert (await register(client, "known@example.com")).status_code == 201

    wrong_password = await login(client, "known@example.com", "not-the-password")
    unknown_email = await login(client, "nobody@example.com", "not-the-password")

    first = assert_problem(wrong_password, 401, "invalid_credentials")
    second = assert_problem(unknown_email, 401, "invalid_credentials")
    first.pop("request_id", None)
    second.pop("request_id", None)
    assert first == second
    assert "not-the-password" not in wrong_password.text


async def test_inactive_user_cannot_log_in(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account = await accounts.create(Role.PATIENT, email="inactive@example.com")
    async with database.unit_of_work() as session:
        await session.execute(update(User).where(User.id == account.id).values(is_active=False))

    response = await login(client, "inactive@example.com")
    assert_problem(response, 401, "invalid_credentials")


async def test_inactive_user_cannot_refresh(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account = await accounts.create(Role.PATIENT)
    async with database.unit_of_work() as session:
        await session.execute(update(User).where(User.id == account.id).values(is_active=False))

    response = await refresh(client, account.refresh_token)
    assert response.status_code == 401, response.text
    assert response.json()["code"] in {"unauthorized", "invalid_credentials"}


async def test_login_validation_errors(client: httpx.AsyncClient) -> None:
    missing = await client.post("/v1/auth/token", json={"email": "a@example.com"})
    body = assert_problem(missing, 422, "validation_error")
    assert ["body", "password"] in [err["loc"] for err in body["errors"]]

    not_an_email = await client.post(
        "/v1/auth/token", json={"email": "not-an-email", "password": "x-secret-1"}
    )
    assert_problem(not_an_email, 422, "validation_error")
    assert "x-secret-1" not in not_an_email.text


# --- access tokens ----------------------------------------------------------------------------


async def test_access_token_claims(client: httpx.AsyncClient, settings: Settings) -> None:
    created = await register(client, "claims@example.com")
    assert created.status_code == 201
    token = (await login(client, "claims@example.com")).json()["access_token"]

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    claims = jwt.decode(
        token,
        settings.jwt_secret.get_secret_value(),
        algorithms=["HS256"],
    )
    assert set(claims) == {"sub", "role", "exp", "iat", "jti"}
    assert claims["sub"] == created.json()["id"]
    assert claims["role"] == "patient"
    assert claims["exp"] - claims["iat"] == 900
    assert isinstance(claims["jti"], str)
    assert claims["jti"]


async def test_each_login_gets_a_distinct_jti(client: httpx.AsyncClient) -> None:
    assert (await register(client, "jti@example.com")).status_code == 201
    first = (await login(client, "jti@example.com")).json()
    second = (await login(client, "jti@example.com")).json()
    jtis = {
        jwt.decode(pair["access_token"], options={"verify_signature": False})["jti"]
        for pair in (first, second)
    }
    assert len(jtis) == 2
    assert first["refresh_token"] != second["refresh_token"]


async def test_me_returns_the_caller(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create(Role.PATIENT, full_name="Mary Seacole")
    response = await client.get("/v1/me", headers=account.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(account.id)
    assert body["full_name"] == "Mary Seacole"
    assert "password_hash" not in body


async def test_me_without_token(client: httpx.AsyncClient) -> None:
    assert_unauthorized(await client.get("/v1/me"))


async def test_me_with_wrong_scheme(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create()
    response = await client.get(
        "/v1/me", headers={"Authorization": f"Basic {account.access_token}"}
    )
    assert_unauthorized(response)


async def test_me_with_malformed_token(client: httpx.AsyncClient) -> None:
    for token in ("garbage", "a.b.c", "Bearer", "eyJhbGciOiJIUzI1NiJ9.e30."):
        assert_unauthorized(await client.get("/v1/me", headers=bearer(token)))


async def test_me_with_token_signed_by_another_secret(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()
    claims = jwt.decode(
        account.access_token,
        settings.jwt_secret.get_secret_value(),
        algorithms=["HS256"],
    )
    forged = jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")
    assert_unauthorized(await client.get("/v1/me", headers=bearer(forged)))


async def test_me_with_alg_none_token(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create(Role.ADMIN)
    claims = jwt.decode(
        account.access_token,
        settings.jwt_secret.get_secret_value(),
        algorithms=["HS256"],
    )
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert jwt.get_unverified_header(unsigned)["alg"] == "none"
    assert_unauthorized(await client.get("/v1/me", headers=bearer(unsigned)))


async def test_me_with_token_of_another_hmac_algorithm(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()
    claims = jwt.decode(
        account.access_token,
        settings.jwt_secret.get_secret_value(),
        algorithms=["HS256"],
    )
    other_alg = jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS384")
    assert_unauthorized(await client.get("/v1/me", headers=bearer(other_alg)))


async def test_me_with_expired_token(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()
    past = datetime.now(UTC) - timedelta(hours=1)
    expired = craft_token(
        settings,
        sub=str(account.id),
        iat=int(past.timestamp()),
        exp=int((past + timedelta(minutes=15)).timestamp()),
    )
    assert_unauthorized(await client.get("/v1/me", headers=bearer(expired)))


async def test_me_with_a_well_formed_crafted_token_is_accepted(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    # Control for the rejections around it: our own crafting produces a token the API accepts.
    account = await accounts.create()
    token = craft_token(settings, sub=str(account.id))
    response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == str(account.id)


async def test_me_with_tokens_missing_claims_or_bad_values(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()
    sub = str(account.id)
    for claim in ("sub", "role", "exp", "iat", "jti"):
        token = craft_token(settings, **{"sub": sub, claim: None})
        assert_unauthorized(await client.get("/v1/me", headers=bearer(token)))
    for overrides in ({"role": "superuser"}, {"sub": "not-a-uuid"}, {"exp": "tomorrow"}):
        token = craft_token(settings, **{"sub": sub, **overrides})
        assert_unauthorized(await client.get("/v1/me", headers=bearer(token)))


# --- refresh ----------------------------------------------------------------------------------


async def test_refresh_rotates(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create()
    response = await refresh(client, account.refresh_token)
    assert response.status_code == 200, response.text
    pair = response.json()
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert pair["token_type"] == "bearer"
    assert pair["expires_in"] == 900
    assert pair["refresh_token"] != account.refresh_token

    me = await client.get("/v1/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200
    assert me.json()["id"] == str(account.id)

    # The new refresh token works (and rotates again)...
    again = await refresh(client, pair["refresh_token"])
    assert again.status_code == 200, again.text
    assert again.json()["refresh_token"] not in {pair["refresh_token"], account.refresh_token}
    # ...while the spent one is dead.
    spent = await refresh(client, account.refresh_token)
    assert spent.status_code == 401, spent.text
    assert spent.headers["content-type"] == PROBLEM


async def test_refresh_keeps_the_family(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account = await accounts.create()
    new_token = (await refresh(client, account.refresh_token)).json()["refresh_token"]
    async with database.reading() as session:
        rows = (
            await session.execute(
                select(RefreshToken.family_id, RefreshToken.token_hash, RefreshToken.revoked_at)
                .where(RefreshToken.user_id == account.id)
                .order_by(RefreshToken.created_at, RefreshToken.id)
            )
        ).all()
    assert len(rows) == 2
    assert len({row.family_id for row in rows}) == 1
    assert sorted(row.revoked_at is None for row in rows) == [False, True]
    # Only hashes are stored, never the secrets themselves.
    assert {row.token_hash for row in rows}.isdisjoint({account.refresh_token, new_token})


async def test_reusing_a_spent_refresh_token_revokes_the_family(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    legit = await refresh(client, account.refresh_token)
    assert legit.status_code == 200
    legit_refresh = legit.json()["refresh_token"]

    reuse = await refresh(client, account.refresh_token)
    assert_problem(reuse, 401, "token_reused")

    # The token issued by the legitimate rotation died with its family.
    after = await refresh(client, legit_refresh)
    assert after.status_code == 401, after.text
    assert after.headers["content-type"] == PROBLEM


async def test_reuse_revokes_only_that_family(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create(email="twofamilies@example.com")
    second_login = await login(client, "twofamilies@example.com")
    assert second_login.status_code == 200
    other_family = second_login.json()["refresh_token"]

    assert (await refresh(client, account.refresh_token)).status_code == 200
    assert_problem(await refresh(client, account.refresh_token), 401, "token_reused")

    assert (await refresh(client, other_family)).status_code == 200


async def test_unknown_refresh_token_is_unauthorized(client: httpx.AsyncClient) -> None:
    response = await refresh(client, "x" * 43)
    assert_problem(response, 401, "unauthorized")


async def test_malformed_refresh_token_is_rejected(client: httpx.AsyncClient) -> None:
    too_short = await refresh(client, "short")
    assert too_short.status_code in {401, 422}
    assert too_short.headers["content-type"] == PROBLEM
    assert_problem(await client.post("/v1/auth/refresh", json={}), 422, "validation_error")


async def test_expired_refresh_token_is_unauthorized(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account = await accounts.create()
    async with database.unit_of_work() as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == account.id)
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    assert_problem(await refresh(client, account.refresh_token), 401, "unauthorized")


async def test_concurrent_refreshes_of_one_token_yield_exactly_one_pair(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    responses = await asyncio.gather(*(refresh(client, account.refresh_token) for _ in range(5)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 401, 401, 401, 401], [r.text for r in responses]
    for response in responses:
        if response.status_code == 401:
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["code"] in {"token_reused", "unauthorized"}


# --- logout -----------------------------------------------------------------------------------


async def test_logout_revokes_the_family(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create()
    rotated = (await refresh(client, account.refresh_token)).json()

    response = await client.post(
        "/v1/auth/logout",
        json={"refresh_token": rotated["refresh_token"]},
        headers=bearer(rotated["access_token"]),
    )
    assert response.status_code == 204, response.text
    assert response.content == b""

    after = await refresh(client, rotated["refresh_token"])
    assert after.status_code == 401, after.text
    assert after.headers["content-type"] == PROBLEM


async def test_logout_leaves_other_sessions_alone(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create(email="twodevices@example.com")
    other_device = (await login(client, "twodevices@example.com")).json()

    response = await client.post(
        "/v1/auth/logout", json={"refresh_token": account.refresh_token}, headers=account.headers
    )
    assert response.status_code == 204
    assert (await refresh(client, account.refresh_token)).status_code == 401
    assert (await refresh(client, other_device["refresh_token"])).status_code == 200


async def test_logout_with_someone_elses_refresh_token_changes_nothing(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    mallory = await accounts.create()
    victim = await accounts.create()

    response = await client.post(
        "/v1/auth/logout", json={"refresh_token": victim.refresh_token}, headers=mallory.headers
    )
    assert response.status_code == 204
    assert (await refresh(client, victim.refresh_token)).status_code == 200


async def test_logout_with_unknown_refresh_token_is_204(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    response = await client.post(
        "/v1/auth/logout", json={"refresh_token": "y" * 43}, headers=account.headers
    )
    assert response.status_code == 204
    assert (await refresh(client, account.refresh_token)).status_code == 200


async def test_logout_requires_a_bearer_token(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    response = await client.post("/v1/auth/logout", json={"refresh_token": account.refresh_token})
    assert_unauthorized(response)
    assert (await refresh(client, account.refresh_token)).status_code == 200


# --- POST /v1/users ---------------------------------------------------------------------------


def operator(role: str, email: str, clinic_id: uuid.UUID | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": email,
        "password": "operator-pass-1",
        "full_name": f"{role.title()} Person",
        "role": role,
    }
    if clinic_id is not None:
        body["clinic_id"] = str(clinic_id)
    return body


async def test_admin_creates_staff_with_a_clinic(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    clinic_id = await make_clinic(database)
    admin = await accounts.create(Role.ADMIN)

    response = await client.post(
        "/v1/users", json=operator("staff", "desk@example.com", clinic_id), headers=admin.headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["role"] == "staff"
    assert body["clinic_id"] == str(clinic_id)
    assert body["email"] == "desk@example.com"
    assert "password_hash" not in body
    assert "operator-pass-1" not in response.text

    token = await login(client, "desk@example.com", "operator-pass-1")
    assert token.status_code == 200
    claims = jwt.decode(token.json()["access_token"], options={"verify_signature": False})
    assert claims["role"] == "staff"


async def test_admin_creates_admin(client: httpx.AsyncClient, accounts: Accounts) -> None:
    admin = await accounts.create(Role.ADMIN)
    response = await client.post(
        "/v1/users", json=operator("admin", "root2@example.com"), headers=admin.headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["role"] == "admin"
    assert response.json()["clinic_id"] is None
    assert (await login(client, "root2@example.com", "operator-pass-1")).status_code == 200


async def test_create_staff_without_clinic_is_a_validation_error(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    admin = await accounts.create(Role.ADMIN)
    response = await client.post(
        "/v1/users", json=operator("staff", "noclinic@example.com"), headers=admin.headers
    )
    body = assert_problem(response, 422, "validation_error")
    assert ["body", "clinic_id"] in [err["loc"] for err in body["errors"]]
    async with database.reading() as session:
        found = await session.execute(select(User).where(User.email == "noclinic@example.com"))
    assert found.first() is None


async def test_create_user_with_unknown_clinic_is_a_validation_error(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(Role.ADMIN)
    response = await client.post(
        "/v1/users",
        json=operator("staff", "ghost@example.com", uuid.uuid4()),
        headers=admin.headers,
    )
    body = assert_problem(response, 422, "validation_error")
    assert ["body", "clinic_id"] in [err["loc"] for err in body["errors"]]


async def test_create_user_with_taken_email(client: httpx.AsyncClient, accounts: Accounts) -> None:
    admin = await accounts.create(Role.ADMIN)
    assert (await register(client, "taken@example.com")).status_code == 201
    response = await client.post(
        "/v1/users", json=operator("admin", "TAKEN@example.com"), headers=admin.headers
    )
    assert_problem(response, 409, "email_taken")


async def test_create_user_refuses_non_admin_callers(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    clinic_id = await make_clinic(database)
    callers = [
        await accounts.create(Role.PATIENT),
        await accounts.create(Role.STAFF, clinic_id=clinic_id),
        await accounts.create(Role.PROVIDER),
    ]
    for number, caller in enumerate(callers):
        response = await client.post(
            "/v1/users",
            json=operator("admin", f"escalate{number}@example.com"),
            headers=caller.headers,
        )
        assert_problem(response, 403, "forbidden")
    async with database.reading() as session:
        admins = (await session.execute(select(User).where(User.role == "admin"))).all()
    assert admins == []


async def test_create_user_requires_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/users", json=operator("admin", "anon@example.com"))
    assert_unauthorized(response)


async def test_create_user_refuses_patient_and_provider_roles(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    clinic_id = await make_clinic(database)
    admin = await accounts.create(Role.ADMIN)
    for role in ("patient", "provider", "superuser"):
        response = await client.post(
            "/v1/users",
            json=operator(role, f"{role}@example.com", clinic_id),
            headers=admin.headers,
        )
        body = assert_problem(response, 422, "validation_error")
        assert ["body", "role"] in [err["loc"] for err in body["errors"]]
