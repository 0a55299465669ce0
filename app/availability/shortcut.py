"""Cached availability answered before FastAPI.

A warm availability read is the most frequent request of the mixed load, and once its answer
is stored bytes behind one Redis round trip, FastAPI's routing, dependency solving and its own
middleware were most of what it cost (a quarter of the CPU of a hit, more than Redis). The
request middleware offers each request to `AvailabilityShortcut` first: for input exactly like
the route's usual (a GET, a canonical provider id, `from` and `to` as dates, once each, a range
the route accepts) whose answer is in the cache, it returns the response the route would have
sent, byte for byte; for anything else, a miss included, it returns None and the request goes
through FastAPI as before, which validates, computes and answers errors.
"""

from __future__ import annotations

import re
import uuid
from datetime import date

from starlette.responses import Response
from starlette.types import Scope

from app.availability.rules import BookingRules
from app.availability.service import cached_availability_json
from app.kit import telemetry
from app.kit.cache import Cache
from app.kit.errors import RangeTooLarge, ValidationFailed
from app.kit.http_cache import PUBLIC_REVALIDATE, conditional_stored

_PATH = re.compile(
    r"/v1/providers/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"/availability"
)
_DATE = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class AvailabilityShortcut:
    """`GET /v1/providers/{provider_id}/availability` from the cache, or None to fall through.

    It reads the app's state on each request (`scope["app"].state`), as the route's dependencies
    do, so it serves with the app's current cache and booking rules."""

    # The route's template: the label of the request's metrics and access log line.
    path = "/v1/providers/{provider_id}/availability"

    async def __call__(self, scope: Scope) -> Response | None:
        # A root path would be stripped before routing; such deployments take FastAPI's way.
        if scope["method"] != "GET" or scope.get("root_path"):
            return None
        matched = _PATH.fullmatch(scope["path"])
        if matched is None:
            return None
        dates = _dates(scope["query_string"])
        if dates is None:
            return None
        # Traced requests take FastAPI's way: its instrumentation makes the request's spans.
        state = scope["app"].state
        cache: Cache = state.cache
        if cache.redis is None or telemetry.tracing():
            return None
        try:
            stored = await cached_availability_json(
                cache,
                BookingRules.from_settings(state.settings),
                uuid.UUID(matched.group(1)),
                *dates,
            )
        except (ValidationFailed, RangeTooLarge):
            return None  # the route answers the 422 or 400
        if stored is None:
            return None
        return conditional_stored(_if_none_match(scope), stored, PUBLIC_REVALIDATE)


def _if_none_match(scope: Scope) -> str | None:
    # The first one, as Starlette's `Request.headers.get` reads it.
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            found: str = value.decode("latin-1")
            return found
    return None


def _dates(query: bytes) -> tuple[date, date] | None:
    """`from` and `to` of a query string that holds exactly those two, each once, as
    YYYY-MM-DD dates; None for any other query (FastAPI then reads it)."""
    found: dict[bytes, date] = {}
    for part in query.split(b"&"):
        name, equals, value = part.partition(b"=")
        if not equals or name not in (b"from", b"to") or name in found:
            return None
        if not _DATE.fullmatch(value):
            return None
        try:
            found[name] = date.fromisoformat(value.decode())
        except ValueError:
            return None
    if len(found) != 2:
        return None
    return found[b"from"], found[b"to"]
