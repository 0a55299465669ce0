"""The catalogue over HTTP (DESIGN §4): clinics, specialties and providers — who may create them,
validation, keyset pagination and the provider search filters."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.catalog import repository as catalog_repository
from app.kit.db import Database
from app.models import Role, Specialty
from tests.fixtures.app import TEST_PASSWORD, Accounts
from tests.fixtures.booking import Booking
from tests.fixtures.problems import assert_problem

GARBAGE_CURSORS = (
    "garbage",
    "!!!not-base64!!!",
    base64.urlsafe_b64encode(b'{"not": "a list"}').decode().rstrip("="),
    base64.urlsafe_b64encode(b'["name", "not-a-uuid"]').decode().rstrip("="),
    base64.urlsafe_b64encode(b'["only one"]').decode().rstrip("="),
)


async def walk_pages(
    client: httpx.AsyncClient, path: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every item of a keyset-paginated list, one item per page."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        query: dict[str, Any] = {**(params or {}), "limit": 1}
        if cursor is not None:
            query["cursor"] = cursor
        response = await client.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        assert len(body["items"]) <= 1
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
        assert body["items"], "a page with a next_cursor must not be empty"
    else:
        pytest.fail(f"{path} did not finish paginating")
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)), f"duplicates across pages: {ids}"
    return items


def provider_body(clinic_id: uuid.UUID, /, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": f"dr-{uuid.uuid4().hex[:8]}@example.com",
        "password": TEST_PASSWORD,
        "full_name": "Dr. Jane Doe",
        "clinic_id": str(clinic_id),
        "specialty": "Cardiology",
        "timezone": "Europe/Paris",
        "slot_minutes": 20,
    }
    body.update(changes)
    return body


# --- clinics ----------------------------------------------------------------------------------


async def test_admin_creates_a_clinic(client: httpx.AsyncClient, accounts: Accounts) -> None:
    admin = await accounts.create(Role.ADMIN)

    response = await client.post(
        "/v1/clinics",
        json={"name": "Harbour Clinic", "timezone": "America/Chicago"},
        headers=admin.headers,
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "name", "timezone"}
    assert body["name"] == "Harbour Clinic"
    assert body["timezone"] == "America/Chicago"
    uuid.UUID(body["id"])
    listed = (await client.get("/v1/clinics")).json()["items"]
    assert body in listed


async def test_clinic_with_an_invalid_timezone_or_name_is_rejected(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(Role.ADMIN)

    for timezone in ("Mars/Base", "", "europe/london", "UTC+2"):
        response = await client.post(
            "/v1/clinics", json={"name": "Nowhere", "timezone": timezone}, headers=admin.headers
        )
        body = assert_problem(response, 422, "validation_error")
        assert ["body", "timezone"] in [error["loc"] for error in body["errors"]], body
    for name in ("", "  "):
        response = await client.post(
            "/v1/clinics", json={"name": name, "timezone": "UTC"}, headers=admin.headers
        )
        assert_problem(response, 422, "validation_error")

    assert (await client.get("/v1/clinics")).json()["items"] == []


async def test_only_admins_create_clinics(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking
) -> None:
    clinic_id = await booking.clinic()
    staff = await accounts.create(Role.STAFF, clinic_id=clinic_id)
    patient = await accounts.create(Role.PATIENT)
    provider = await booking.provider(clinic_id=clinic_id)
    body = {"name": "Rogue Clinic", "timezone": "UTC"}

    for headers in (staff.headers, patient.headers, provider.headers):
        response = await client.post("/v1/clinics", json=body, headers=headers)
        assert_problem(response, 403, "forbidden")
    assert_problem(await client.post("/v1/clinics", json=body), 401, "unauthorized")
    bad_token = {"Authorization": "Bearer not-a-token"}
    assert_problem(
        await client.post("/v1/clinics", json=body, headers=bad_token), 401, "unauthorized"
    )

    names = {c["name"] for c in (await client.get("/v1/clinics")).json()["items"]}
    assert "Rogue Clinic" not in names


async def test_clinics_are_listed_anonymously_page_by_page(
    client: httpx.AsyncClient, booking: Booking
) -> None:
    created = {
        await booking.clinic(name=name, timezone=zone)
        for name, zone in (
            ("Birch Clinic", "Europe/London"),
            ("Alder Clinic", "Asia/Tokyo"),
            ("Cedar Clinic", "America/New_York"),
            ("Alder Clinic", "Europe/Berlin"),  # same name: the id breaks the tie
        )
    }

    first = await client.get("/v1/clinics")
    assert first.status_code == 200, first.text
    assert first.json()["next_cursor"] is None
    assert len(first.json()["items"]) == 4
    items = await walk_pages(client, "/v1/clinics")

    assert {uuid.UUID(item["id"]) for item in items} == created
    assert all(set(item) == {"id", "name", "timezone"} for item in items)
    # The walk visits clinics in the same order as one big page.
    assert items == first.json()["items"]


async def test_specialties_are_listed_anonymously_page_by_page(
    client: httpx.AsyncClient, booking: Booking
) -> None:
    names = ["Neurology", "Cardiology", "Paediatrics", "Oncology", "Dermatology"]
    async with booking.database.unit_of_work() as session:
        for name in names:
            await catalog_repository.insert_specialty(session, name)

    items = await walk_pages(client, "/v1/specialties")

    assert sorted(item["name"] for item in items) == sorted(names)
    assert all(set(item) == {"id", "name"} for item in items)


@pytest.mark.parametrize("path", ["/v1/clinics", "/v1/specialties", "/v1/providers"])
async def test_catalogue_lists_reject_a_bad_limit(client: httpx.AsyncClient, path: str) -> None:
    for limit in ("0", "101", "-1", "ten"):
        response = await client.get(path, params={"limit": limit})
        body = assert_problem(response, 422, "validation_error")
        assert ["query", "limit"] in [error["loc"] for error in body["errors"]], body


@pytest.mark.parametrize("path", ["/v1/clinics", "/v1/specialties", "/v1/providers"])
async def test_catalogue_lists_reject_a_garbage_cursor(
    client: httpx.AsyncClient, booking: Booking, path: str
) -> None:
    await booking.provider()

    for cursor in GARBAGE_CURSORS:
        response = await client.get(path, params={"cursor": cursor})
        assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("path", ["/v1/clinics", "/v1/specialties", "/v1/providers"])
async def test_catalogue_lists_accept_the_limit_bounds(
    client: httpx.AsyncClient, booking: Booking, path: str
) -> None:
    await booking.provider()

    for limit in (1, 100):
        response = await client.get(path, params={"limit": limit})
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == 1
        assert response.json()["next_cursor"] is None


@pytest.mark.parametrize("path", ["/v1/clinics", "/v1/specialties"])
async def test_catalogue_lists_carry_an_etag_that_follows_changes(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking, path: str
) -> None:
    admin = await accounts.create(Role.ADMIN)
    clinic_id = await booking.clinic(name="First Clinic")
    created = await client.post(
        "/v1/providers",
        json=provider_body(clinic_id, specialty="First Specialty"),
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text

    first = await client.get(path)
    assert first.status_code == 200, first.text
    etag = first.headers.get("etag")
    assert etag, f"{path} has no ETag (DESIGN §4: catalogue, cached, ETag)"
    not_modified = await client.get(path, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304, not_modified.text
    assert not_modified.content == b""
    assert not_modified.headers.get("etag") == etag

    # A change through the API gives a new representation and a new ETag at once.
    if path == "/v1/clinics":
        change = await client.post(
            "/v1/clinics", json={"name": "Second Clinic", "timezone": "UTC"}, headers=admin.headers
        )
        new_name = "Second Clinic"
    else:
        change = await client.post(
            "/v1/providers",
            json=provider_body(clinic_id, specialty="Second Specialty"),
            headers=admin.headers,
        )
        new_name = "Second Specialty"
    assert change.status_code == 201, change.text
    changed = await client.get(path, headers={"If-None-Match": etag})
    assert changed.status_code == 200, changed.text
    assert changed.headers.get("etag") not in {None, etag}
    assert new_name in {item["name"] for item in changed.json()["items"]}


# --- creating providers -----------------------------------------------------------------------


async def test_admin_creates_a_provider_who_can_log_in(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking
) -> None:
    admin = await accounts.create(Role.ADMIN)
    clinic_id = await booking.clinic(timezone="Europe/Paris")
    body = provider_body(clinic_id, full_name="Dr. Ada Heart")

    response = await client.post("/v1/providers", json=body, headers=admin.headers)

    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == {"id", "full_name", "specialty", "clinic_id", "timezone", "slot_minutes"}
    assert created["full_name"] == "Dr. Ada Heart"
    assert created["specialty"] == "Cardiology"
    assert created["clinic_id"] == str(clinic_id)
    assert created["timezone"] == "Europe/Paris"
    assert created["slot_minutes"] == 20
    assert "password" not in response.text
    assert TEST_PASSWORD not in response.text

    login = await client.post(
        "/v1/auth/token", json={"email": body["email"], "password": TEST_PASSWORD}
    )
    assert login.status_code == 200, login.text
    me = await client.get(
        "/v1/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"}
    )
    assert me.status_code == 200, me.text
    assert me.json()["id"] == created["id"]
    assert me.json()["role"] == "provider"

    profile = await client.get(f"/v1/providers/{created['id']}")
    assert profile.status_code == 200, profile.text
    assert profile.json()["specialty"] == "Cardiology"
    assert profile.json()["slot_minutes"] == 20


async def test_specialty_is_created_once_and_reused_case_insensitively(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking, database: Database
) -> None:
    admin = await accounts.create(Role.ADMIN)
    clinic_id = await booking.clinic()

    first = await client.post(
        "/v1/providers",
        json=provider_body(clinic_id, specialty="dermatology"),
        headers=admin.headers,
    )
    second = await client.post(
        "/v1/providers",
        json=provider_body(clinic_id, specialty="Dermatology"),
        headers=admin.headers,
    )
    third = await client.post(
        "/v1/providers",
        json=provider_body(clinic_id, specialty="  DERMATOLOGY "),
        headers=admin.headers,
    )

    for response in (first, second, third):
        assert response.status_code == 201, response.text
        assert response.json()["specialty"] == "dermatology"
    async with database.reading() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Specialty)
            .where(func.lower(Specialty.name) == "dermatology")
        )
    assert count == 1
    specialties = (await client.get("/v1/specialties")).json()["items"]
    assert [s["name"] for s in specialties] == ["dermatology"]
    listed = (await client.get("/v1/providers", params={"specialty": "DERMATOLOGY"})).json()
    assert len(listed["items"]) == 3


async def test_staff_create_providers_for_their_own_clinic_only(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking
) -> None:
    own_clinic = await booking.clinic(name="Own")
    other_clinic = await booking.clinic(name="Other")
    staff = await accounts.create(Role.STAFF, clinic_id=own_clinic)
    other_staff = await accounts.create(Role.STAFF, clinic_id=other_clinic)

    allowed = await client.post(
        "/v1/providers", json=provider_body(own_clinic), headers=staff.headers
    )
    refused = await client.post(
        "/v1/providers", json=provider_body(own_clinic), headers=other_staff.headers
    )
    refused_elsewhere = await client.post(
        "/v1/providers", json=provider_body(other_clinic), headers=staff.headers
    )

    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["clinic_id"] == str(own_clinic)
    assert_problem(refused, 403, "forbidden")
    assert_problem(refused_elsewhere, 403, "forbidden")
    listed = (await client.get("/v1/providers")).json()["items"]
    assert [p["id"] for p in listed] == [allowed.json()["id"]]


async def test_patients_providers_and_strangers_cannot_create_providers(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking
) -> None:
    clinic_id = await booking.clinic()
    patient = await accounts.create(Role.PATIENT)
    provider = await booking.provider(clinic_id=clinic_id)

    for headers in (patient.headers, provider.headers):
        response = await client.post(
            "/v1/providers", json=provider_body(clinic_id), headers=headers
        )
        assert_problem(response, 403, "forbidden")
    anonymous = await client.post("/v1/providers", json=provider_body(clinic_id))
    assert_problem(anonymous, 401, "unauthorized")
    listed = (await client.get("/v1/providers")).json()["items"]
    assert [p["id"] for p in listed] == [str(provider.id)]


async def test_provider_with_a_taken_email_is_409(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking
) -> None:
    admin = await accounts.create(Role.ADMIN)
    clinic_id = await booking.clinic()
    patient = await accounts.create(Role.PATIENT, email="taken-one@example.com")

    first = await client.post(
        "/v1/providers",
        json=provider_body(clinic_id, email="dr-dup@example.com"),
        headers=admin.headers,
    )
    duplicate = await client.post(
        "/v1/providers",
        json=provider_body(clinic_id, email="DR-Dup@Example.com", specialty="Brand New"),
        headers=admin.headers,
    )
    patient_email = await client.post(
        "/v1/providers",
        json=provider_body(clinic_id, email=patient.user.email),
        headers=admin.headers,
    )

    assert first.status_code == 201, first.text
    assert_problem(duplicate, 409, "email_taken")
    assert_problem(patient_email, 409, "email_taken")
    # The refused request left nothing behind, not even its new specialty.
    specialties = {s["name"] for s in (await client.get("/v1/specialties")).json()["items"]}
    assert "Brand New" not in specialties
    listed = (await client.get("/v1/providers")).json()["items"]
    assert [p["id"] for p in listed] == [first.json()["id"]]


async def test_provider_for_an_unknown_clinic_is_422(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(Role.ADMIN)

    response = await client.post(
        "/v1/providers", json=provider_body(uuid.uuid4()), headers=admin.headers
    )

    assert_problem(response, 422, "validation_error")


async def test_invalid_provider_is_422(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking
) -> None:
    admin = await accounts.create(Role.ADMIN)
    clinic_id = await booking.clinic()
    invalid: list[dict[str, Any]] = [
        {"slot_minutes": 0},
        {"slot_minutes": 1000},
        {"slot_minutes": -30},
        {"timezone": "Mars/Base"},
        {"timezone": ""},
        {"email": "not-an-email"},
        {"password": "short"},
        {"full_name": ""},
        {"specialty": ""},
        {"clinic_id": "not-a-uuid"},
    ]

    for changes in invalid:
        response = await client.post(
            "/v1/providers", json=provider_body(clinic_id, **changes), headers=admin.headers
        )
        body = assert_problem(response, 422, "validation_error")
        (field,) = changes
        assert ["body", field] in [error["loc"] for error in body["errors"]], (changes, body)
        assert TEST_PASSWORD not in response.text

    assert (await client.get("/v1/providers")).json()["items"] == []
    assert (await client.get("/v1/specialties")).json()["items"] == []


async def test_missing_provider_fields_are_422(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking
) -> None:
    admin = await accounts.create(Role.ADMIN)
    clinic_id = await booking.clinic()
    body = provider_body(clinic_id)
    del body["specialty"]
    del body["slot_minutes"]

    response = await client.post("/v1/providers", json=body, headers=admin.headers)

    problem = assert_problem(response, 422, "validation_error")
    missing = {tuple(error["loc"]) for error in problem["errors"]}
    assert ("body", "specialty") in missing
    assert ("body", "slot_minutes") in missing


# --- listing and reading providers ------------------------------------------------------------


async def test_provider_list_filters(client: httpx.AsyncClient, booking: Booking) -> None:
    north = await booking.clinic(name="North", timezone="Europe/London")
    south = await booking.clinic(name="South", timezone="Europe/Madrid")
    alice = await booking.provider(
        clinic_id=north, specialty="Cardiology", full_name="Dr. Alice Smith"
    )
    bob = await booking.provider(clinic_id=south, specialty="cardiology", full_name="Dr. Bob Jones")
    carol = await booking.provider(
        clinic_id=north, specialty="Neurology", full_name="Dr. Carol 100% Sure"
    )
    dave = await booking.provider(
        clinic_id=south, specialty="Neurology", full_name="Dr. Dave Under_Score"
    )
    everyone = {str(p.id) for p in (alice, bob, carol, dave)}

    async def ids(**params: Any) -> set[str]:
        response = await client.get("/v1/providers", params=params)
        assert response.status_code == 200, response.text
        assert response.json()["next_cursor"] is None
        return {item["id"] for item in response.json()["items"]}

    assert await ids() == everyone
    assert await ids(specialty="CARDIOLOGY") == {str(alice.id), str(bob.id)}
    assert await ids(specialty="neurology") == {str(carol.id), str(dave.id)}
    assert await ids(specialty="Cardio") == set()
    assert await ids(specialty="Unknown") == set()
    assert await ids(clinic_id=str(north)) == {str(alice.id), str(carol.id)}
    assert await ids(clinic_id=str(uuid.uuid4())) == set()
    assert await ids(clinic_id=str(south), specialty="cardiology") == {str(bob.id)}
    assert await ids(q="ALICE") == {str(alice.id)}
    assert await ids(q="o") == {str(bob.id), str(carol.id), str(dave.id)}
    assert await ids(q="dr.") == everyone
    # % and _ are matched literally, not as LIKE wildcards.
    assert await ids(q="%") == {str(carol.id)}
    assert await ids(q="100%") == {str(carol.id)}
    assert await ids(q="_") == {str(dave.id)}
    assert await ids(q="r_S") == {str(dave.id)}
    assert await ids(q="\\") == set()
    assert await ids(q="Zed") == set()
    assert await ids(q="o", clinic_id=str(north)) == {str(carol.id)}
    assert await ids(q="o", specialty="Cardiology") == {str(bob.id)}

    bad = await client.get("/v1/providers", params={"clinic_id": "not-a-uuid"})
    assert_problem(bad, 422, "validation_error")


async def test_provider_list_items_and_pages(client: httpx.AsyncClient, booking: Booking) -> None:
    clinic_id = await booking.clinic(name="Central", timezone="Asia/Tokyo")
    providers = [
        await booking.provider(clinic_id=clinic_id, full_name=name, specialty="Oncology")
        for name in ("Dr. Yuki", "Dr. Aoi", "Dr. Ren", "Dr. Aoi")
    ]

    items = await walk_pages(client, "/v1/providers")
    filtered = await walk_pages(client, "/v1/providers", {"q": "aoi", "specialty": "oncology"})

    assert {item["id"] for item in items} == {str(p.id) for p in providers}
    for item in items:
        assert set(item) == {"id", "full_name", "specialty", "clinic"}
        assert item["specialty"] == "Oncology"
        assert item["clinic"] == {"id": str(clinic_id), "name": "Central", "timezone": "Asia/Tokyo"}
    assert {item["id"] for item in filtered} == {str(providers[1].id), str(providers[3].id)}
    one_page = (await client.get("/v1/providers")).json()["items"]
    assert items == one_page


async def test_provider_profile(client: httpx.AsyncClient, booking: Booking) -> None:
    clinic_id = await booking.clinic(name="Lakeside", timezone="America/Denver")
    provider = await booking.provider(
        clinic_id=clinic_id,
        timezone="America/Denver",
        slot_minutes=45,
        specialty="Psychiatry",
        full_name="Dr. Quinn",
    )

    response = await client.get(f"/v1/providers/{provider.id}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == str(provider.id)
    assert body["full_name"] == "Dr. Quinn"
    assert body["specialty"] == "Psychiatry"
    assert body["clinic"] == {
        "id": str(clinic_id),
        "name": "Lakeside",
        "timezone": "America/Denver",
    }
    assert body["clinic_id"] == str(clinic_id)
    assert body["timezone"] == "America/Denver"
    assert body["slot_minutes"] == 45
    assert "email" not in body
    assert "password_hash" not in body


async def test_unknown_provider_is_404_and_a_malformed_id_is_422(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    await booking.provider()
    patient = await accounts.create(Role.PATIENT)

    assert_problem(await client.get(f"/v1/providers/{uuid.uuid4()}"), 404, "not_found")
    # A patient's id is a user but not a provider.
    assert_problem(await client.get(f"/v1/providers/{patient.id}"), 404, "not_found")
    assert_problem(await client.get("/v1/providers/not-a-uuid"), 422, "validation_error")
    assert_problem(await client.get("/v1/providers/123"), 422, "validation_error")
