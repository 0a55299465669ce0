"""Unit tests for app.kit.pagination: opaque keyset cursors and page building."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from app.kit.errors import ValidationFailed, install_error_handlers
from app.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Page,
    Pagination,
    build_page,
    decode_cursor,
    encode_cursor,
    parse_datetime,
    parse_uuid,
)

KEY_PARSERS: list[Callable[[Any], Any]] = [parse_datetime, parse_uuid]


def raw_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


def assert_cursor_invalid(error: pytest.ExceptionInfo[ValidationFailed]) -> None:
    exc = error.value
    assert exc.status == 422
    assert exc.code == "validation_error"
    assert exc.extra["errors"] == [{"loc": ["query", "cursor"], "msg": "cursor is not valid"}]


# --- cursors ----------------------------------------------------------------------------------


def test_round_trip_datetime_and_uuid() -> None:
    starts_at = datetime(2031, 3, 30, 1, 30, 15, 123456, tzinfo=UTC)
    row_id = uuid.uuid4()
    cursor = encode_cursor([starts_at, row_id])

    decoded = decode_cursor(cursor, KEY_PARSERS)
    assert decoded == [starts_at, row_id]
    assert isinstance(decoded[1], uuid.UUID)
    assert decoded[0].utcoffset() == timedelta(0)


def test_round_trip_keeps_non_utc_offsets() -> None:
    local = datetime(2031, 10, 26, 2, 30, tzinfo=timezone(timedelta(hours=2)))
    decoded = decode_cursor(encode_cursor([local, uuid.UUID(int=7)]), KEY_PARSERS)
    assert decoded[0] == local
    assert decoded[0].utcoffset() == timedelta(hours=2)
    assert decoded[1] == uuid.UUID(int=7)


def test_round_trip_plain_values() -> None:
    cursor = encode_cursor(["Smith", 42])
    assert decode_cursor(cursor, [str, int]) == ["Smith", 42]


def test_cursor_is_url_safe_and_unpadded() -> None:
    for n in range(1, 12):
        cursor = encode_cursor(["x" * n, uuid.uuid4()])
        assert "=" not in cursor
        assert "+" not in cursor
        assert "/" not in cursor
        assert decode_cursor(cursor, [str, parse_uuid])[0] == "x" * n


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "!!!!",
        "a",
        "not a cursor at all",
        "%%%",
        "\ud800",
        "é" * 10,
        base64.urlsafe_b64encode(b"\xff\xfe\x00binary").decode(),
        raw_cursor({"starts_at": "2031-01-01T00:00:00+00:00"}),
        raw_cursor("just a string"),
        raw_cursor(None),
        raw_cursor(17),
    ],
)
def test_garbage_cursor_is_a_validation_error(garbage: str) -> None:
    with pytest.raises(ValidationFailed) as error:
        decode_cursor(garbage, KEY_PARSERS)
    assert_cursor_invalid(error)


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["2031-01-01T00:00:00+00:00"],
        ["2031-01-01T00:00:00+00:00", str(uuid.UUID(int=1)), "extra"],
    ],
)
def test_wrong_arity_is_a_validation_error(values: list[Any]) -> None:
    with pytest.raises(ValidationFailed) as error:
        decode_cursor(raw_cursor(values), KEY_PARSERS)
    assert_cursor_invalid(error)


@pytest.mark.parametrize(
    "values",
    [
        ["2031-01-01T00:00:00", str(uuid.UUID(int=1))],  # no offset
        ["yesterday", str(uuid.UUID(int=1))],
        [1_900_000_000, str(uuid.UUID(int=1))],
        ["2031-01-01T00:00:00+00:00", "not-a-uuid"],
        ["2031-01-01T00:00:00+00:00", 12345],
        ["2031-01-01T00:00:00+00:00", None],
        [str(uuid.UUID(int=1)), "2031-01-01T00:00:00+00:00"],  # swapped
    ],
)
def test_wrong_value_types_are_a_validation_error(values: list[Any]) -> None:
    with pytest.raises(ValidationFailed) as error:
        decode_cursor(raw_cursor(values), KEY_PARSERS)
    assert_cursor_invalid(error)


def test_parsers() -> None:
    assert parse_uuid(str(uuid.UUID(int=5))) == uuid.UUID(int=5)
    assert parse_datetime("2031-01-01T10:00:00+01:00") == datetime(2031, 1, 1, 9, tzinfo=UTC)
    with pytest.raises(ValueError, match="offset"):
        parse_datetime("2031-01-01T10:00:00")
    with pytest.raises(TypeError):
        parse_datetime(123)
    with pytest.raises(TypeError):
        parse_uuid(123)


# --- build_page -------------------------------------------------------------------------------


def key(row: tuple[datetime, uuid.UUID]) -> Sequence[Any]:
    return row


def rows(n: int) -> list[tuple[datetime, uuid.UUID]]:
    base = datetime(2031, 1, 1, tzinfo=UTC)
    return [(base + timedelta(minutes=30 * i), uuid.UUID(int=i + 1)) for i in range(n)]


def test_build_page_with_more_rows_has_a_next_cursor() -> None:
    fetched = rows(4)  # limit + 1
    items, next_cursor = build_page(fetched, 3, key)
    assert items == fetched[:3]
    assert next_cursor is not None
    assert decode_cursor(next_cursor, KEY_PARSERS) == list(fetched[2])


def test_build_page_with_exactly_limit_rows_is_the_last_page() -> None:
    fetched = rows(3)
    items, next_cursor = build_page(fetched, 3, key)
    assert items == fetched
    assert next_cursor is None


def test_build_page_with_fewer_rows_is_the_last_page() -> None:
    fetched = rows(2)
    items, next_cursor = build_page(fetched, 3, key)
    assert items == fetched
    assert next_cursor is None


def test_build_page_with_no_rows() -> None:
    items, next_cursor = build_page(rows(0), 20, key)
    assert items == []
    assert next_cursor is None


def test_build_page_does_not_mutate_its_input() -> None:
    fetched = rows(5)
    snapshot = list(fetched)
    build_page(fetched, 2, key)
    assert fetched == snapshot


def test_walking_pages_visits_every_row_once() -> None:
    all_rows = rows(7)
    seen: list[tuple[datetime, uuid.UUID]] = []
    cursor: str | None = None
    pages = 0
    while True:
        if cursor is None:
            remaining = all_rows
        else:
            after = tuple(decode_cursor(cursor, KEY_PARSERS))
            remaining = [row for row in all_rows if row > after]
        items, cursor = build_page(remaining[:4], 3, key)  # the query fetches limit + 1
        seen.extend(items)
        pages += 1
        if cursor is None:
            break
    assert seen == all_rows
    assert pages == 3


# --- the `Pagination` dependency --------------------------------------------------------------


def pagination_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/items")
    async def items(page: Pagination) -> Page[int]:
        return Page[int](items=[page.limit], next_cursor=page.cursor)

    return app


async def get_items(**params: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=pagination_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://unit.test") as client:
        return await client.get("/items", params=params)


async def test_pagination_defaults() -> None:
    response = await get_items()
    assert response.status_code == 200
    assert response.json() == {"items": [DEFAULT_LIMIT], "next_cursor": None}
    assert DEFAULT_LIMIT == 20
    assert MAX_LIMIT == 100


async def test_pagination_accepts_bounds_and_passes_the_cursor() -> None:
    for limit in (1, MAX_LIMIT):
        response = await get_items(limit=limit, cursor="abc")
        assert response.status_code == 200
        assert response.json() == {"items": [limit], "next_cursor": "abc"}


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "ten"}])
async def test_pagination_rejects_bad_limits(params: dict[str, Any]) -> None:
    response = await get_items(**params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_error"
    assert ["query", "limit"] in [error["loc"] for error in body["errors"]]


async def test_pagination_rejects_oversized_cursors() -> None:
    response = await get_items(cursor="c" * 513)
    assert response.status_code == 422
    assert ["query", "cursor"] in [error["loc"] for error in response.json()["errors"]]
