"""Keyset pagination: `?limit=&cursor=` in, `{"items": [...], "next_cursor": ...}` out.

A cursor is the opaque, URL-safe encoding of the sort key of the last row of the previous page.
Anything that does not decode into the expected shape is a `validation_error`.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar, overload

import orjson
from fastapi import Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel

from app.kit.errors import ValidationFailed

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: str | None

    @overload
    def position(self, first: Callable[[Any], A], /) -> tuple[A] | None: ...

    @overload
    def position(
        self, first: Callable[[Any], A], second: Callable[[Any], B], /
    ) -> tuple[A, B] | None: ...

    def position(self, *parsers: Callable[[Any], Any]) -> tuple[Any, ...] | None:
        """The keyset position the cursor names, each value parsed by its parser in turn; None
        on the first page. A cursor that does not decode to that shape is a 422."""
        if self.cursor is None:
            return None
        return tuple(decode_cursor(self.cursor, parsers))


async def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=cursor)


Pagination = Annotated[PageParams, Depends(page_params)]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def encode_cursor(values: Sequence[Any]) -> str:
    raw = orjson.dumps([_plain(v) for v in values])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, parsers: Sequence[Callable[[Any], Any]]) -> list[Any]:
    """Decode a cursor and parse each position with the given callable (e.g. `uuid.UUID`)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(raw, list) or len(raw) != len(parsers):
            raise ValueError("cursor has the wrong shape")
        return [parse(value) for parse, value in zip(parsers, raw, strict=True)]
    except (ValueError, TypeError, OverflowError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise ValidationFailed("cursor is not valid", loc=("query", "cursor")) from exc


def parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("cursor time has no offset")
    # The database compares in UTC: a time that leaves the calendar there (year 1 at +14:00)
    # must fail here, as a validation error, not in the driver.
    parsed.astimezone(UTC)
    return parsed


def parse_uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return uuid.UUID(value)


def build_page(
    rows: Sequence[T], limit: int, key: Callable[[T], Sequence[Any]]
) -> tuple[list[T], str | None]:
    """Given up to `limit + 1` rows, return the page and the cursor of the next one."""
    items = list(rows[:limit])
    next_cursor = encode_cursor(key(items[-1])) if len(rows) > limit and items else None
    return items, next_cursor


def _uuid_text(value: Any) -> str:
    # asyncpg's UUID subclass, which orjson does not take for a UUID.
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def item_json(item: Mapping[str, Any]) -> bytes:
    """One item of plain values as `page_response` serialises each of a page's: the bytes
    FastAPI writes for its model."""
    return orjson.dumps(item, default=_uuid_text, option=orjson.OPT_UTC_Z)


def item_response(item: Mapping[str, Any]) -> Response:
    return Response(content=item_json(item), media_type="application/json")


def page_response(items: Sequence[Any], next_cursor: str | None) -> Response:
    """A page serialised once, by orjson, from plain values (dicts, tuples, UUIDs, datetimes):
    the same bytes FastAPI writes for a `Page` model of the same values (keys in the order
    given, compact separators, UTF-8, UTC times with `Z` as pydantic renders them)."""
    body = orjson.dumps(
        {"items": items, "next_cursor": next_cursor}, default=_uuid_text, option=orjson.OPT_UTC_Z
    )
    return Response(content=body, media_type="application/json")
