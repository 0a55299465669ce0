"""The in-app feed (DESIGN §4, GET /v1/me/notifications and POST .../{id}/read): newest first,
keyset pages without duplicates or gaps, an unread filter, strictly the caller's own rows, an
idempotent read marker, and one statement per page whatever its size."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from app.kit.db import Database
from app.models import Role
from app.notifications.service import Message, notify
from tests.fixtures.app import Account, Accounts, count_statements
from tests.fixtures.problems import assert_problem

FEED = "/v1/me/notifications"
ITEM_KEYS = {"id", "kind", "title", "body", "data", "created_at", "read_at"}


def read_url(notification_id: str | uuid.UUID) -> str:
    return f"{FEED}/{notification_id}/read"


async def write(
    database: Database,
    recipients: Sequence[uuid.UUID],
    *,
    kind: str = "booked",
    title: str = "Appointment confirmed",
    body: str = "Your visit is confirmed.",
    data: dict[str, str] | None = None,
) -> list[uuid.UUID]:
    """One notification per recipient, committed in its own transaction (its own created_at)."""
    async with database.unit_of_work() as session:
        return await notify(
            session,
            recipients,
            Message(kind, title, body, data or {}),
            f"test:{uuid.uuid4().hex}",
        )


async def write_series(database: Database, user: Account, count: int) -> list[str]:
    """`count` notifications written one after another; the ids oldest first."""
    ids: list[str] = []
    for n in range(count):
        written = await write(database, [user.id], title=f"Notice {n}", data={"n": str(n)})
        ids.extend(str(i) for i in written)
    return ids


async def write_batch(database: Database, users: Sequence[Account], count: int) -> None:
    """`count` notifications per user in a single transaction: they share one created_at."""
    async with database.unit_of_work() as session:
        for n in range(count):
            await notify(
                session,
                [user.id for user in users],
                Message("batch", f"Batch {n}", "Same instant.", {"n": str(n)}),
                f"batch:{uuid.uuid4().hex}",
            )


async def feed(client: httpx.AsyncClient, user: Account, **params: Any) -> dict[str, Any]:
    response = await client.get(FEED, params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    assert set(page) == {"items", "next_cursor"}
    for item in page["items"]:
        assert set(item) == ITEM_KEYS, item
    return page


async def walk(
    client: httpx.AsyncClient, user: Account, limit: int, **params: Any
) -> list[dict[str, Any]]:
    """Every page in turn; each page is full but the last, and none is empty."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(200):
        query = {**params, "limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        page = await feed(client, user, **query)
        cursor = page["next_cursor"]
        assert page["items"], "a cursor led to an empty page"
        items.extend(page["items"])
        if cursor is None:
            assert len(page["items"]) <= limit
            return items
        assert len(page["items"]) == limit
    pytest.fail("pagination did not finish")


def sort_key(item: dict[str, Any]) -> tuple[datetime, uuid.UUID]:
    return datetime.fromisoformat(item["created_at"]), uuid.UUID(item["id"])


def ids(items: Sequence[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def cursor_of(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


# --- listing ----------------------------------------------------------------------------------


async def test_an_empty_feed(client: httpx.AsyncClient, accounts: Accounts) -> None:
    patient = await accounts.create(Role.PATIENT)

    assert await feed(client, patient) == {"items": [], "next_cursor": None}
    assert await feed(client, patient, unread="true") == {"items": [], "next_cursor": None}


async def test_items_carry_the_message_and_come_newest_first(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    appointment_id = str(uuid.uuid4())
    booked = await write(
        database,
        [patient.id],
        kind="booked",
        title="Appointment confirmed",
        body="Your visit with Dr. Test is on Mon 01 Jun 2026 at 09:00.",
        data={"kind": "booked", "appointment_id": appointment_id},
    )
    moved = await write(database, [patient.id], kind="rescheduled", title="Appointment moved")
    reminder = await write(database, [patient.id], kind="reminder", data={"lead_minutes": "60"})

    page = await feed(client, patient)

    assert page["next_cursor"] is None
    assert ids(page["items"]) == [str(reminder[0]), str(moved[0]), str(booked[0])]
    oldest = page["items"][-1]
    assert oldest["kind"] == "booked"
    assert oldest["title"] == "Appointment confirmed"
    assert oldest["body"] == "Your visit with Dr. Test is on Mon 01 Jun 2026 at 09:00."
    assert oldest["data"] == {"kind": "booked", "appointment_id": appointment_id}
    assert page["items"][1]["data"] == {}
    assert page["items"][0]["data"] == {"lead_minutes": "60"}
    assert all(item["read_at"] is None for item in page["items"])
    times = [datetime.fromisoformat(item["created_at"]) for item in page["items"]]
    assert all(t.tzinfo is not None for t in times)
    assert times == sorted(times, reverse=True)
    assert abs(datetime.now(UTC) - times[0]) < timedelta(minutes=5)


async def test_the_same_event_written_twice_is_one_row(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    """A job that runs twice (same dedupe prefix) does not double the feed."""
    patient = await accounts.create(Role.PATIENT)
    message = Message("booked", "Appointment confirmed", "Once.")
    async with database.unit_of_work() as session:
        first = await notify(session, [patient.id, patient.id], message, "event:1")
    async with database.unit_of_work() as session:
        second = await notify(session, [patient.id], message, "event:1")

    assert first == second
    assert ids((await feed(client, patient))["items"]) == [str(first[0])]


async def test_each_user_sees_only_their_own_notifications(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    alice = await accounts.create(Role.PATIENT)
    bob = await accounts.create(Role.PATIENT)
    provider = await accounts.create(Role.PROVIDER)
    idle = await accounts.create(Role.PATIENT)
    alice_only = await write(database, [alice.id], title="For Alice")
    both = await write(database, [alice.id, bob.id], title="For both")
    provider_only = await write(database, [provider.id], title="For the provider")

    alices = ids((await feed(client, alice))["items"])
    bobs = ids((await feed(client, bob))["items"])
    providers = ids((await feed(client, provider))["items"])

    assert alices == [str(both[0]), str(alice_only[0])]
    assert bobs == [str(both[1])]
    assert providers == [str(provider_only[0])]
    assert (await feed(client, idle))["items"] == []


async def test_pages_cover_every_row_once_in_order(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    other = await accounts.create(Role.PATIENT)
    older = await write_series(database, patient, 4)
    await write_batch(database, [patient, other], 5)  # five rows tied on created_at
    newer = await write_series(database, patient, 3)

    everything = (await feed(client, patient, limit=100))["items"]
    assert len(everything) == 12
    assert sorted(everything, key=sort_key, reverse=True) == everything
    assert ids(everything)[:3] == newer[::-1]
    assert ids(everything)[-4:] == older[::-1]
    assert {item["kind"] for item in everything[3:8]} == {"batch"}
    assert len({item["created_at"] for item in everything[3:8]}) == 1

    # Page edges inside the tied batch (1, 4, 5), on it (3), and a page size that divides the
    # feed exactly (4, 12): never a duplicate, a gap or a trailing empty page.
    for limit in (1, 3, 4, 5, 12):
        walked = await walk(client, patient, limit)
        assert ids(walked) == ids(everything), limit
    assert (await feed(client, patient))["next_cursor"] is None  # default page is 20


async def test_a_cursor_never_reaches_another_users_rows(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    alice = await accounts.create(Role.PATIENT)
    bob = await accounts.create(Role.PATIENT)
    await write_batch(database, [alice, bob], 4)
    alices_first = await feed(client, alice, limit=2)
    assert alices_first["next_cursor"] is not None

    bobs = await feed(client, bob, cursor=alices_first["next_cursor"], limit=100)

    bob_ids = set(ids((await feed(client, bob))["items"]))
    assert bobs["items"]
    assert set(ids(bobs["items"])) <= bob_ids
    assert not set(ids(bobs["items"])) & set(ids(alices_first["items"]))


async def test_limit_outside_1_to_100_is_422(client: httpx.AsyncClient, accounts: Accounts) -> None:
    patient = await accounts.create(Role.PATIENT)

    for limit in ("0", "101", "-1", "ten", "", "2.5"):
        response = await client.get(FEED, params={"limit": limit}, headers=patient.headers)
        body = assert_problem(response, 422, "validation_error")
        assert ["query", "limit"] in [error["loc"] for error in body["errors"]], limit
    assert (await feed(client, patient, limit=100))["items"] == []


async def test_a_cursor_that_does_not_decode_is_422(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    await write_series(database, patient, 2)
    now = datetime.now(UTC).isoformat()

    for cursor in (
        "garbage",
        "%%%",
        "x" * 600,
        cursor_of([1, 2]),
        cursor_of([now]),
        cursor_of([now, str(uuid.uuid4()), "extra"]),
        cursor_of(["2030-01-01T00:00:00", str(uuid.uuid4())]),  # no offset
        cursor_of(["not a time", str(uuid.uuid4())]),
        cursor_of([now, "not-a-uuid"]),
        cursor_of([str(uuid.uuid4()), now]),  # swapped
        base64.urlsafe_b64encode(b'{"created_at": 1}').decode(),
    ):
        response = await client.get(FEED, params={"cursor": cursor}, headers=patient.headers)
        assert_problem(response, 422, "validation_error")


async def test_a_cursor_time_out_of_range_in_utc_is_422_not_500(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)

    for moment in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        cursor = cursor_of([moment, str(uuid.uuid4())])
        response = await client.get(FEED, params={"cursor": cursor}, headers=patient.headers)
        assert_problem(response, 422, "validation_error")


async def test_unread_filter_lists_only_unread_rows(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    written = await write_series(database, patient, 6)
    for read in (written[1], written[4]):
        response = await client.post(read_url(read), headers=patient.headers)
        assert response.status_code == 200, response.text
    unread = [i for i in written if i not in {written[1], written[4]}][::-1]

    only_unread = await feed(client, patient, unread="true")
    assert ids(only_unread["items"]) == unread
    assert all(item["read_at"] is None for item in only_unread["items"])
    assert ids(await walk(client, patient, 1, unread="true")) == unread
    assert ids(await walk(client, patient, 3, unread="true")) == unread

    everything = await feed(client, patient, unread="false")
    assert ids(everything["items"]) == written[::-1]
    assert ids((await feed(client, patient))["items"]) == written[::-1]
    read_ats = {item["id"]: item["read_at"] for item in everything["items"]}
    assert read_ats[written[1]] is not None
    assert read_ats[written[4]] is not None


async def test_an_unread_value_that_is_not_a_boolean_is_422(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)

    response = await client.get(FEED, params={"unread": "maybe"}, headers=patient.headers)

    body = assert_problem(response, 422, "validation_error")
    assert ["query", "unread"] in [error["loc"] for error in body["errors"]]


async def test_a_page_is_one_statement_whatever_its_size(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    await write_batch(database, [patient], 60)

    async def statements(**params: Any) -> int:
        with count_statements(database.primary) as log:
            page = await feed(client, patient, **params)
        assert len(page["items"]) == params["limit"]
        return log.count

    for unread in ("false", "true"):
        small = await statements(limit=5, unread=unread)
        large = await statements(limit=50, unread=unread)
        assert small == large == 1, unread
    cursor = (await feed(client, patient, limit=5))["next_cursor"]
    assert await statements(limit=50, cursor=cursor) == 1


# --- marking read -----------------------------------------------------------------------------


async def test_marking_read_sets_read_at_once(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    target, untouched = await write_series(database, patient, 2)

    first = await client.post(read_url(target), headers=patient.headers)

    assert first.status_code == 200, first.text
    marked = first.json()
    assert set(marked) == ITEM_KEYS
    assert marked["id"] == target
    assert marked["title"] == "Notice 0"
    assert marked["data"] == {"n": "0"}
    read_at = datetime.fromisoformat(marked["read_at"])
    assert read_at >= datetime.fromisoformat(marked["created_at"])
    assert abs(datetime.now(UTC) - read_at) < timedelta(minutes=5)

    again = await client.post(read_url(target), headers=patient.headers)
    assert again.status_code == 200, again.text
    assert again.json() == marked  # idempotent: the first read_at stands

    listed = {item["id"]: item for item in (await feed(client, patient))["items"]}
    assert listed[target] == marked
    assert listed[untouched]["read_at"] is None


async def test_someone_elses_notification_is_not_found_and_stays_unread(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    alice = await accounts.create(Role.PATIENT)
    bob = await accounts.create(Role.PATIENT)
    admin = await accounts.create(Role.ADMIN)
    alices = str((await write(database, [alice.id]))[0])

    for intruder in (bob, admin):
        response = await client.post(read_url(alices), headers=intruder.headers)
        assert_problem(response, 404, "not_found")

    assert (await feed(client, alice))["items"][0]["read_at"] is None
    assert len((await feed(client, alice, unread="true"))["items"]) == 1


async def test_an_unknown_notification_is_not_found(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)

    response = await client.post(read_url(uuid.uuid4()), headers=patient.headers)

    assert_problem(response, 404, "not_found")


async def test_a_malformed_notification_id_is_422(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)

    for bad_id in ("not-a-uuid", "123", f"{uuid.uuid4()}0"):
        response = await client.post(read_url(bad_id), headers=patient.headers)
        body = assert_problem(response, 422, "validation_error")
        assert ["path", "notification_id"] in [error["loc"] for error in body["errors"]], bad_id


async def test_the_feed_requires_a_valid_bearer_token(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    notification = str((await write(database, [patient.id]))[0])

    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
        assert_problem(await client.get(FEED, headers=headers), 401, "unauthorized")
        response = await client.post(read_url(notification), headers=headers)
        assert_problem(response, 401, "unauthorized")

    assert (await feed(client, patient))["items"][0]["read_at"] is None
