"""Cached availability is answered before FastAPI (`app.availability.shortcut`), and the answer
is the route's own, byte for byte; anything else goes through FastAPI as before.

Each comparison asks the same app twice, with its shortcuts and without them (the route then
serves the same cached value), so the only difference under test is the path taken."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from app.kit.cache import Cache, get_cache
from app.kit.db import Database
from app.settings import Settings
from tests.fixtures.app import Accounts, client_for, running_app
from tests.fixtures.booking import Booking, next_local_day
from tests.fixtures.cache import CacheCounts, read_until_cached
from tests.fixtures.observability import Spans, json_logs

ROUTE = "/v1/providers/{provider_id}/availability"


class RouteCalls:
    """How many requests reached the route's dependencies (FastAPI's path)."""

    def __init__(self) -> None:
        self.count = 0


@contextmanager
def counting_route_calls(app: FastAPI) -> Iterator[RouteCalls]:
    calls = RouteCalls()

    async def counted_cache(request: Request) -> Cache:
        calls.count += 1
        cache: Cache = request.app.state.cache
        return cache

    app.dependency_overrides[get_cache] = counted_cache
    try:
        yield calls
    finally:
        app.dependency_overrides.pop(get_cache, None)


@pytest.fixture
def route_calls(app: FastAPI) -> Iterator[RouteCalls]:
    with counting_route_calls(app) as calls:
        yield calls


def cache_requests(result: str) -> float:
    labels = {"cache": "availability", "result": result}
    return REGISTRY.get_sample_value("carebook_cache_requests_total", labels) or 0.0


# The per-IP budget left, and the seconds until it is refilled: they change between any two
# requests (by one, or not at all when a window ends between them), whichever way they went.
_BUDGET_LEFT = ("x-request-id", "ratelimit-remaining", "ratelimit-reset")


def _comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], object]:
    """Everything but the request id (a header, and a member of problem bodies) and the rate
    limit's running count (its headers are there, with the same limit, either way)."""
    assert {"ratelimit-remaining", "ratelimit-reset"} <= response.headers.keys()
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in _BUDGET_LEFT]
    body: object = response.content
    if response.content and response.headers.get("content-type") == "application/problem+json":
        problem = response.json()
        assert problem.pop("request_id") == response.headers["x-request-id"]
        body = problem
        headers = [(k, v) for k, v in headers if k != "content-length"]  # the id's length
    return response.status_code, headers, body


async def _both_ways(
    app: FastAPI, client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> tuple[httpx.Response, httpx.Response]:
    with_shortcut = await client.request(method, url, **kwargs)
    # Set and put back by hand: monkeypatch's undo deletes a Starlette `State` attribute.
    shortcuts = app.state.shortcuts
    app.state.shortcuts = ()
    try:
        through_fastapi = await client.request(method, url, **kwargs)
    finally:
        app.state.shortcuts = shortcuts
    return with_shortcut, through_fastapi


async def _cached_window(app: FastAPI, client: httpx.AsyncClient, booking: Booking) -> str:
    """The URL of a window that is in the cache (clear of the minimum notice, so its key does
    not change with the clock minute)."""
    provider = await booking.provider()
    first = next_local_day(provider.timezone, days_ahead=4)
    url = (
        f"/v1/providers/{provider.id}/availability"
        f"?from={first.isoformat()}&to={(first + timedelta(days=6)).isoformat()}"
    )

    async def read() -> bytes:
        response = await client.get(url)
        assert response.status_code == 200, response.text
        return response.content

    await read_until_cached(CacheCounts(), "availability", read)
    return url


async def test_a_hit_is_the_routes_answer_byte_for_byte(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, route_calls: RouteCalls
) -> None:
    url = await _cached_window(app, client, booking)
    for encoding in ("gzip", "identity"):
        calls = route_calls.count
        shortcut, route = await _both_ways(
            app, client, "GET", url, headers={"Accept-Encoding": encoding}
        )
        assert shortcut.status_code == 200
        # Large enough to be compressed: the gzip case is not the identity case again.
        assert ("content-encoding" in shortcut.headers) == (encoding == "gzip")
        assert _comparable(shortcut) == _comparable(route)
        assert route_calls.count == calls + 1  # only the request without shortcuts reached it

    etag = shortcut.headers["etag"]
    for if_none_match, status, encoding in (
        (etag, 304, "gzip"),
        (etag, 304, "identity"),  # an empty body: no Vary either way
        (f'W/{etag}, "other"', 304, "gzip"),
        ("*", 304, "gzip"),
        ('"stale"', 200, "gzip"),
        ('"stale"', 200, "identity"),
    ):
        calls = route_calls.count
        shortcut, route = await _both_ways(
            app,
            client,
            "GET",
            url,
            headers={"If-None-Match": if_none_match, "Accept-Encoding": encoding},
        )
        assert shortcut.status_code == status, if_none_match
        assert _comparable(shortcut) == _comparable(route), if_none_match
        assert route_calls.count == calls + 1
    assert shortcut.headers["etag"] == etag


async def test_a_hit_counts_once_and_is_labelled_with_the_route(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, route_calls: RouteCalls
) -> None:
    url = await _cached_window(app, client, booking)
    stats = CacheCounts()
    labels = {"method": "GET", "route": ROUTE, "status": "200"}
    hits, misses = cache_requests("hit"), cache_requests("miss")
    stats_hits = stats.hits.get("availability", 0)
    served = REGISTRY.get_sample_value("carebook_http_requests_total", labels) or 0.0
    calls = route_calls.count

    with json_logs() as logs:
        response = await client.get(url)

    assert response.status_code == 200
    assert route_calls.count == calls  # served before FastAPI
    assert cache_requests("hit") == hits + 1
    assert cache_requests("miss") == misses
    assert stats.hits.get("availability", 0) == stats_hits + 1
    assert REGISTRY.get_sample_value("carebook_http_requests_total", labels) == served + 1
    (access,) = logs.where(logger="carebook.access", request_id=response.headers["x-request-id"])
    assert access["route"] == ROUTE
    assert access["status"] == 200


async def test_a_miss_goes_through_fastapi_and_counts_one_miss(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, route_calls: RouteCalls
) -> None:
    provider = await booking.provider()
    first = next_local_day(provider.timezone, days_ahead=5)
    hits, misses = cache_requests("hit"), cache_requests("miss")

    with json_logs() as logs:
        response = await client.get(
            f"/v1/providers/{provider.id}/availability",
            params={"from": first.isoformat(), "to": first.isoformat()},
        )

    assert response.status_code == 200, response.text
    assert route_calls.count == 1
    assert cache_requests("miss") == misses + 1
    assert cache_requests("hit") == hits
    (access,) = logs.where(logger="carebook.access", request_id=response.headers["x-request-id"])
    assert access["route"] == ROUTE


async def test_other_input_falls_through_to_the_route(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, route_calls: RouteCalls
) -> None:
    url = await _cached_window(app, client, booking)
    path, _, query = url.partition("?")
    provider_id = path.split("/")[3]
    first = query.split("&")[0].removeprefix("from=")
    canonical = uuid.UUID(provider_id)
    variants = {
        # Accepted by the route, which answers from the same cached value.
        "an extra parameter": (f"{url}&extra=1", 200),
        "from given twice": (f"{url}&from={first}", 200),
        "an id without dashes": (url.replace(provider_id, canonical.hex), 200),
        "an id in braces": (url.replace(provider_id, f"{{{canonical}}}"), 200),
        "a percent-encoded name": (url.replace("from=", "%66rom="), 200),
        # Refused by the route.
        "an impossible date": (f"{path}?from=2026-02-30&to={first}", 422),
        "a date that is not one": (f"{path}?from=tomorrow&to={first}", 422),
        "to before from": (f"{path}?from={first}&to=2000-01-01", 422),
        "a range of 32 dates": (f"{path}?from=2030-01-01&to=2030-02-01", 422),
        "no dates": (path, 422),
        "an unknown provider": (url.replace(provider_id, str(uuid.uuid4())), 404),
    }
    for name, (variant, status) in variants.items():
        calls = route_calls.count
        shortcut, route = await _both_ways(app, client, "GET", variant)
        assert shortcut.status_code == status, (name, shortcut.text)
        assert _comparable(shortcut) == _comparable(route), name
        if status != 422:  # a refused query never reaches the dependencies
            assert route_calls.count == calls + 2, name  # both ways went through FastAPI
    for method in ("HEAD", "POST"):
        shortcut, route = await _both_ways(app, client, method, url)
        assert shortcut.status_code == 405, method
        assert _comparable(shortcut) == _comparable(route), method


async def test_an_uppercase_id_is_the_same_cached_answer(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, route_calls: RouteCalls
) -> None:
    url = await _cached_window(app, client, booking)
    provider_id = url.split("/")[3]
    calls = route_calls.count
    shortcut, route = await _both_ways(
        app, client, "GET", url.replace(provider_id, provider_id.upper())
    )
    assert shortcut.status_code == 200
    assert _comparable(shortcut) == _comparable(route)
    assert route_calls.count == calls + 1


async def test_with_tracing_on_a_hit_goes_through_fastapi_for_its_spans(
    spans: Spans, settings: Settings, database: Database
) -> None:
    async with running_app(settings) as app, client_for(app) as client:
        booking = Booking(app, client, Accounts(app, client))
        url = await _cached_window(app, client, booking)
        spans.exporter.clear()
        with counting_route_calls(app) as calls:
            response = await client.get(url)
        assert response.status_code == 200
        assert calls.count == 1

    routes = [
        span.attributes.get("http.route")
        for span in spans.finished
        if span.kind == SpanKind.SERVER and span.attributes
    ]
    assert routes == [ROUTE]
