"""The error model (RFC 9457 problem+json with a stable `code`), body limits and request ids."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from sqlalchemy import text

from app.kit.db import Database, WriteSession
from app.settings import Settings
from tests.fixtures.app import client_for, make_settings, running_app
from tests.fixtures.problems import PROBLEM, PROBLEM_KEYS, assert_problem

LIMIT = 1_048_576
SECRET_PASSWORD = "Sup3r-Secret-Passw0rd!"  # long enough to be valid, distinctive to search for
REGISTER = "/v1/auth/register"


def assert_validation_problem(response: httpx.Response) -> list[dict[str, Any]]:
    body = assert_problem(response, 422, "validation_error")
    errors: list[dict[str, Any]] = body["errors"]
    assert isinstance(errors, list)
    assert errors
    for error in errors:
        assert set(error) == {"loc", "msg"}, error
        assert isinstance(error["loc"], list)
        assert isinstance(error["msg"], str)
        assert error["msg"]
    assert SECRET_PASSWORD not in response.text
    return errors


def locs(errors: list[dict[str, Any]]) -> list[list[Any]]:
    return [error["loc"] for error in errors]


# --- validation errors ------------------------------------------------------------------------


async def test_validation_error_lists_locations_without_echoing_input(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        REGISTER,
        json={"email": "not-an-email", "password": SECRET_PASSWORD, "full_name": ""},
    )
    errors = assert_validation_problem(response)
    assert ["body", "email"] in locs(errors)
    assert ["body", "full_name"] in locs(errors)
    body = response.json()
    assert "input" not in body
    assert all("input" not in error and "ctx" not in error for error in body["errors"])


async def test_password_is_never_echoed_even_when_it_is_the_invalid_field(
    client: httpx.AsyncClient,
) -> None:
    too_long = SECRET_PASSWORD * 10  # 220 characters, over the 128 limit
    response = await client.post(
        REGISTER, json={"email": "long@example.com", "password": too_long, "full_name": "A"}
    )
    errors = assert_validation_problem(response)
    assert ["body", "password"] in locs(errors)
    assert SECRET_PASSWORD not in response.text


async def test_a_nul_character_anywhere_is_a_validation_error_and_stores_nothing(
    client: httpx.AsyncClient, database: Database
) -> None:
    # PostgreSQL cannot store NUL in text; schemas need not each refuse it (found by the fuzzer).
    response = await client.post(
        REGISTER,
        json={"email": "nul@example.com", "password": SECRET_PASSWORD, "full_name": "A\u0000B"},
    )
    assert_validation_problem(response)
    async with database.reading(primary=True) as session:
        users = await session.execute(text("SELECT count(*) FROM users"))
        assert users.scalar_one() == 0
    search = await client.get("/v1/providers", params={"q": "dr\u0000"})
    assert_validation_problem(search)


async def test_wrong_types(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER, json={"email": 42, "password": [SECRET_PASSWORD], "full_name": {"a": 1}}
    )
    errors = assert_validation_problem(response)
    assert {("body", "email"), ("body", "password"), ("body", "full_name")} <= {
        tuple(loc) for loc in locs(errors)
    }


async def test_missing_fields(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, json={"password": SECRET_PASSWORD})
    errors = assert_validation_problem(response)
    assert ["body", "email"] in locs(errors)
    assert ["body", "full_name"] in locs(errors)


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER,
        content=b'{"email": "a@example.com", "password": "' + SECRET_PASSWORD.encode() + b'",',
        headers={"content-type": "application/json"},
    )
    errors = assert_validation_problem(response)
    assert errors[0]["loc"][0] == "body"


async def test_json_array_instead_of_object(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER, json=[{"email": "a@example.com", "password": SECRET_PASSWORD}]
    )
    assert_validation_problem(response)


async def test_empty_body(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, headers={"content-type": "application/json"})
    assert_validation_problem(response)
    no_content_type = await client.post(REGISTER)
    assert_validation_problem(no_content_type)


async def test_non_json_content_type(client: httpx.AsyncClient) -> None:
    payload = orjson.dumps(
        {"email": "plain@example.com", "password": SECRET_PASSWORD, "full_name": "Plain"}
    )
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = await client.post(
            REGISTER, content=payload, headers={"content-type": content_type}
        )
        assert response.status_code in {415, 422}, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json().keys() >= PROBLEM_KEYS
        assert SECRET_PASSWORD not in response.text
    # Nothing was registered through the side door.
    token = await client.post(
        "/v1/auth/token", json={"email": "plain@example.com", "password": SECRET_PASSWORD}
    )
    assert token.status_code == 401


async def test_wrong_type_on_another_route(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth/refresh", json={"refresh_token": 12345})
    errors = assert_validation_problem(response)
    assert ["body", "refresh_token"] in locs(errors)


# --- body size limit --------------------------------------------------------------------------


def padded_register_body(size: int, email: str) -> bytes:
    payload = orjson.dumps({"email": email, "password": SECRET_PASSWORD, "full_name": "Big"})
    assert len(payload) <= size
    return payload + b" " * (size - len(payload))


async def test_oversized_body_with_content_length(client: httpx.AsyncClient) -> None:
    body = padded_register_body(LIMIT + 1, "big@example.com")
    response = await client.post(
        REGISTER, content=body, headers={"content-type": "application/json"}
    )
    assert response.request.headers["content-length"] == str(LIMIT + 1)
    assert_problem(response, 413, "payload_too_large")
    assert response.headers.get("x-request-id")
    # Nothing was registered.
    token = await client.post(
        "/v1/auth/token", json={"email": "big@example.com", "password": SECRET_PASSWORD}
    )
    assert token.status_code == 401


async def test_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    body = padded_register_body(LIMIT, "edge@example.com")
    response = await client.post(
        REGISTER, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def chunks(total: int, *, first: bytes = b"", size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    if first:
        yield first
        sent = len(first)
    while sent < total:
        piece = min(size, total - sent)
        yield b" " * piece
        sent += piece


async def test_oversized_streamed_body_without_content_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER,
        content=chunks(LIMIT + 1, first=b'{"email": "stream@example.com"}'),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_problem(response, 413, "payload_too_large")


async def test_large_streamed_body_is_refused_not_buffered(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER,
        content=chunks(8 * LIMIT),
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 413, "payload_too_large")


async def test_streamed_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    payload = orjson.dumps(
        {"email": "streamedge@example.com", "password": SECRET_PASSWORD, "full_name": "Edge"}
    )
    response = await client.post(
        REGISTER,
        content=chunks(LIMIT, first=payload),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_oversized_body_on_an_unknown_route_is_still_a_problem(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/nowhere", content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"}
    )
    assert response.status_code in {404, 413}
    assert response.headers["content-type"] == PROBLEM


# --- router errors ----------------------------------------------------------------------------


async def test_unknown_route_is_a_not_found_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/does-not-exist")
    assert_problem(response, 404, "not_found")
    assert_problem(await client.post("/nowhere/at/all", json={}), 404, "not_found")


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient) -> None:
    response = await client.get(REGISTER)
    body = assert_problem(response, 405, "method_not_allowed")
    assert body["status"] == 405
    assert "POST" in response.headers.get("allow", "")

    delete_me = await client.delete("/v1/me")
    assert delete_me.status_code == 405
    assert delete_me.headers["content-type"] == PROBLEM
    assert "GET" in delete_me.headers.get("allow", "")


async def test_auth_errors_are_problems(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/me")
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].lower().startswith("bearer")


async def test_problem_type_is_a_uri_derived_from_the_code(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v1/nope"), 404, "not_found")
    assert body["type"] == "https://carebook.dev/problems/not-found"
    body = assert_problem(await client.post(REGISTER, json={}), 422, "validation_error")
    assert body["type"] == "https://carebook.dev/problems/validation-error"


# --- request ids ------------------------------------------------------------------------------


async def test_every_response_has_a_request_id(client: httpx.AsyncClient) -> None:
    responses = [
        await client.get("/health/live"),
        await client.get("/v1/me"),
        await client.get("/v1/nowhere"),
        await client.get(REGISTER),
        await client.post(REGISTER, json={}),
        await client.post(
            REGISTER, content=b" " * (LIMIT + 1), headers={"content-type": "application/json"}
        ),
    ]
    ids = [response.headers.get("x-request-id") for response in responses]
    assert all(ids), ids
    assert len(set(ids)) == len(ids)
    for response in responses[1:]:
        assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_incoming_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    request_id = "edge-proxy:4f2a.9B_1-x"
    ok = await client.get("/health/live", headers={"X-Request-ID": request_id})
    assert ok.headers["x-request-id"] == request_id

    problem = await client.get("/v1/me", headers={"x-request-id": request_id})
    assert problem.headers["x-request-id"] == request_id
    assert problem.json()["request_id"] == request_id


async def test_invalid_incoming_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    for bad in ("has spaces in it", "x" * 129, 'quote"d', "<script>", "semi;colon"):
        response = await client.get("/health/live", headers={"X-Request-ID": bad})
        echoed = response.headers["x-request-id"]
        assert echoed != bad
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", echoed), echoed


# --- unexpected failures ----------------------------------------------------------------------

LEAKY_MESSAGE = "kaboom: secret connection string postgresql://admin:hunter2@db"


def _probe_routes(app: FastAPI) -> None:
    @app.get("/_probe/crash")
    async def crash() -> dict[str, str]:
        raise RuntimeError(LEAKY_MESSAGE)

    @app.post("/_probe/bad-sql")
    async def bad_sql(session: WriteSession) -> dict[str, str]:
        await session.execute(text("SELECT secret_column FROM no_such_table_xyz"))
        return {"status": "unreachable"}

    @app.get("/_probe/crash-in-thread")
    async def crash_in_thread() -> dict[str, str]:
        def explode() -> None:
            raise KeyError(LEAKY_MESSAGE)

        await asyncio.to_thread(explode)
        return {"status": "unreachable"}


def assert_internal_error(response: httpx.Response) -> None:
    body = assert_problem(response, 500, "internal_error")
    request_id = response.headers["x-request-id"]
    assert request_id
    assert body["request_id"] == request_id
    for leak in ("Traceback", "hunter2", "kaboom", "RuntimeError", "KeyError", 'File "'):
        assert leak not in response.text, leak


async def test_unhandled_exception_is_a_bare_500_problem(settings: Settings) -> None:
    async with running_app(settings) as app:
        _probe_routes(app)
        async with client_for(app) as client:
            crash = await client.get("/_probe/crash")
            in_thread = await client.get("/_probe/crash-in-thread")
            echoed = await client.get("/_probe/crash", headers={"X-Request-ID": "trace-me-42"})
            after = await client.get("/health/live")
    assert_internal_error(crash)
    assert_internal_error(in_thread)
    assert_internal_error(echoed)
    assert echoed.json()["request_id"] == "trace-me-42"
    # The app keeps serving after a crash.
    assert after.status_code == 200


async def test_sql_error_never_reaches_the_client(settings: Settings) -> None:
    async with running_app(settings) as app:
        _probe_routes(app)
        async with client_for(app) as client:
            response = await client.post("/_probe/bad-sql")
    assert_internal_error(response)
    for leak in ("no_such_table_xyz", "secret_column", "SELECT", "asyncpg", "sqlalchemy"):
        assert leak not in response.text, leak


async def test_database_outage_is_a_503_problem_without_details(settings: Settings) -> None:
    dead = make_settings("postgresql+asyncpg://postgres@127.0.0.1:1/x", settings.redis_url)
    async with running_app(dead) as app, client_for(app) as client:
        response = await client.post(
            "/v1/auth/token", json={"email": "a@example.com", "password": SECRET_PASSWORD}
        )
    assert_problem(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == "1"
    for leak in ("127.0.0.1", "Traceback", "Errno", "asyncpg", SECRET_PASSWORD):
        assert leak not in response.text, leak
