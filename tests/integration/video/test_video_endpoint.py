"""The video room of a visit (DESIGN §4, GET /v1/appointments/{id}/video): its participants get
the status and, once the room exists, the join URL; staff and admins who can see the visit are
refused (403); everyone who cannot see it gets 404, as for the appointment itself."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import update

from app.kit.db import Database
from app.models import Appointment
from app.settings import Settings
from app.video import repository as video_repository
from tests.fixtures.app import Account, client_for, make_settings, running_app
from tests.fixtures.problems import assert_problem
from tests.fixtures.world import Cast, Visit, video_url

ROOM = "room-abc"


async def record_room(database: Database, visit: Visit, room_id: str = ROOM) -> None:
    async with database.unit_of_work() as session:
        await video_repository.record_room(session, visit.appointment_id, room_id)


async def video(client: httpx.AsyncClient, visit: Visit, viewer: Account) -> dict[str, str]:
    response = await client.get(visit.url, headers=viewer.headers)
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    assert set(body) <= {"status", "join_url"}
    return body


def expected_join_url(settings: Settings, room_id: str = ROOM) -> str:
    return settings.videosdk_join_url_template.replace("{room_id}", room_id)


async def test_a_new_visit_is_pending_without_a_join_url(
    client: httpx.AsyncClient, visit: Visit
) -> None:
    for viewer in (visit.patient, visit.provider.account):
        body = await video(client, visit, viewer)
        assert body["status"] == "pending"
        assert body.get("join_url") is None


async def test_both_participants_get_the_join_url_once_the_room_is_ready(
    client: httpx.AsyncClient,
    visit: Visit,
    database: Database,
    settings: Settings,
) -> None:
    await record_room(database, visit)

    join_url = expected_join_url(settings)
    assert ROOM in join_url
    assert "{room_id}" not in join_url
    for viewer in (visit.patient, visit.provider.account):
        assert await video(client, visit, viewer) == {"status": "ready", "join_url": join_url}
    appointment = await client.get(f"/v1/appointments/{visit.id}", headers=visit.patient.headers)
    assert appointment.json()["video_status"] == "ready"


async def test_a_checked_in_visit_keeps_its_room(
    client: httpx.AsyncClient,
    visit: Visit,
    database: Database,
    settings: Settings,
) -> None:
    check_in = await client.post(
        f"/v1/appointments/{visit.id}/check-in", headers=visit.provider.headers
    )
    assert check_in.status_code == 200, check_in.text
    await record_room(database, visit)

    body = await video(client, visit, visit.patient)
    assert body == {"status": "ready", "join_url": expected_join_url(settings)}


async def test_a_failed_room_has_no_join_url(
    client: httpx.AsyncClient, visit: Visit, database: Database
) -> None:
    async with database.unit_of_work() as session:
        assert await video_repository.mark_failed(session, visit.appointment_id)

    for viewer in (visit.patient, visit.provider.account):
        body = await video(client, visit, viewer)
        assert body["status"] == "failed"
        assert body.get("join_url") is None


async def test_ready_without_a_room_id_has_no_join_url(
    client: httpx.AsyncClient, visit: Visit, database: Database
) -> None:
    async with database.unit_of_work() as session:
        await session.execute(
            update(Appointment)
            .where(Appointment.id == visit.appointment_id)
            .values(video_status="ready")
        )

    body = await video(client, visit, visit.patient)
    assert body["status"] == "ready"
    assert body.get("join_url") is None


async def test_a_cancelled_visit_never_offers_its_room(
    client: httpx.AsyncClient, visit: Visit, database: Database
) -> None:
    cancel = await client.post(
        f"/v1/appointments/{visit.id}/cancel",
        json={"reason": "Feeling better"},
        headers=visit.patient.headers,
    )
    assert cancel.status_code == 200, cancel.text
    # The worker created the room just as the visit was cancelled: kept on record, not ready.
    await record_room(database, visit)

    for viewer in (visit.patient, visit.provider.account):
        body = await video(client, visit, viewer)
        assert body["status"] == "pending"
        assert body.get("join_url") is None

    async with database.unit_of_work() as session:
        await video_repository.room_deleted(session, visit.appointment_id, ROOM)
    body = await video(client, visit, visit.patient)
    assert body["status"] == "not_required"
    assert body.get("join_url") is None


async def test_staff_and_admins_who_see_the_visit_are_forbidden(
    client: httpx.AsyncClient, visit: Visit, cast: Cast, database: Database
) -> None:
    await record_room(database, visit)
    staff, admin = cast.staff, cast.admin

    for operator in (staff, admin):
        seen = await client.get(f"/v1/appointments/{visit.id}", headers=operator.headers)
        assert seen.status_code == 200, seen.text  # they may see the visit...
        response = await client.get(visit.url, headers=operator.headers)
        assert_problem(response, 403, "forbidden")  # ...but not join its call
        assert ROOM not in response.text


async def test_everyone_who_cannot_see_the_visit_gets_not_found(
    client: httpx.AsyncClient, visit: Visit, cast: Cast, database: Database
) -> None:
    await record_room(database, visit)
    other_patient, other_staff = cast.other_patient, cast.other_staff
    colleague = cast.other_provider

    for outsider in (other_patient, colleague.account, other_staff):
        response = await client.get(visit.url, headers=outsider.headers)
        assert_problem(response, 404, "not_found")
        assert ROOM not in response.text
    # The same answer as for a visit that does not exist: existence is not revealed.
    for viewer in (visit.patient, visit.provider.account, other_staff):
        assert_problem(
            await client.get(video_url(uuid.uuid4()), headers=viewer.headers), 404, "not_found"
        )


async def test_a_malformed_id_is_422_and_no_token_is_401(
    client: httpx.AsyncClient, visit: Visit
) -> None:
    response = await client.get(video_url("not-a-uuid"), headers=visit.patient.headers)
    body = assert_problem(response, 422, "validation_error")
    assert ["path", "appointment_id"] in [error["loc"] for error in body["errors"]]

    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
        assert_problem(await client.get(visit.url, headers=headers), 401, "unauthorized")


async def test_the_join_url_follows_the_configured_template(
    visit: Visit, database: Database, settings: Settings
) -> None:
    await record_room(database, visit)
    template = "https://meet.example.test/rooms/{room_id}/join?embed=1"
    custom = make_settings(
        settings.database_url, settings.redis_url, videosdk_join_url_template=template
    )

    async with running_app(custom) as other_app, client_for(other_app) as other_client:
        body = await video(other_client, visit, visit.patient)

    assert body == {
        "status": "ready",
        "join_url": "https://meet.example.test/rooms/room-abc/join?embed=1",
    }
