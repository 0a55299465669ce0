"""Fuzzing the API from its own OpenAPI document never yields a 500 or a trace (audit F19).

Schemathesis generates requests, valid and not, for every operation the app publishes; they go
over real HTTP to a uvicorn process on 127.0.0.1 (its own database, migrated by Alembic, with
a clinic, a bookable provider and accounts of every role in it) with an admin's bearer token,
so requests get past authentication into validation and the services. Every answer must be
below 500, and every error a problem+json with a stable code and no stack trace. Bounded: a
fixed number of examples per operation and a timeout on each request.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from app.main import create_app
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import UNLIMITED_RATES, Accounts, client_for, make_settings, running_app
from tests.fixtures.booking import Booking
from tests.fixtures.servers import fresh_database

if TYPE_CHECKING:  # imported at run time, pytest would try to collect the `Test*` class
    from tests.fixtures.servers import TestServers

REPO_ROOT = Path(__file__).resolve().parents[2]
# More for a deeper local run: CAREBOOK_FUZZ_EXAMPLES=500 pytest tests/integration/test_fuzz_api.py
EXAMPLES_PER_OPERATION = int(os.environ.get("CAREBOOK_FUZZ_EXAMPLES", "25"))
REQUEST_TIMEOUT_S = 10.0
READY_WITHIN_S = 60.0
PROBLEM = "application/problem+json"

schema = schemathesis.openapi.from_dict(
    create_app(Settings(environment="test", jwt_secret="s" * 48)).openapi()
)


@dataclass(frozen=True)
class FuzzTarget:
    url: str
    headers: dict[str, str]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _environment(app_settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBOOK_")}
    for name, value in app_settings.model_dump(mode="json", exclude_none=True).items():
        if (
            name in {"database_url", "redis_url", "environment", "log_json"}
            or name in UNLIMITED_RATES
        ):
            env[f"CAREBOOK_{name.upper()}"] = str(value).lower() if value is True else str(value)
    env["CAREBOOK_JWT_SECRET"] = app_settings.jwt_secret.get_secret_value()
    env["CAREBOOK_LOG_LEVEL"] = "ERROR"
    return env


@pytest.fixture(scope="module")
async def fuzz_target(test_servers: TestServers) -> AsyncIterator[FuzzTarget]:
    async with fresh_database(test_servers, "carebook_fuzz", migrate=True) as url:
        app_settings = make_settings(url, test_servers.redis_url)
        async with running_app(app_settings) as app, client_for(app) as client:
            accounts = Accounts(app, client)
            booking = Booking(app, client, accounts)
            provider = await booking.provider()
            await accounts.create(Role.STAFF, clinic_id=provider.clinic_id)
            await accounts.create(Role.PATIENT)
            admin = await accounts.create(Role.ADMIN)
        with _uvicorn(app_settings) as base_url:
            await _wait_ready(base_url)
            yield FuzzTarget(base_url, admin.headers)


_LOG = Path(os.environ.get("TMPDIR", "/tmp")) / f"carebook-fuzz-{os.getpid()}.log"  # noqa: S108


@contextmanager
def _uvicorn(app_settings: Settings) -> Iterator[str]:
    """A uvicorn process serving the app on a free loopback port; stopped on the way out."""
    port = _free_port()
    command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with _LOG.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=_environment(app_settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


async def _wait_ready(base_url: str) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"the fuzzed server was not ready:\n{_server_output()}")


def _server_output() -> str:
    return _LOG.read_text(errors="replace")[-4000:] if _LOG.exists() else ""


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_500_or_a_trace(
    case: schemathesis.Case[Any], fuzz_target: FuzzTarget
) -> None:
    response = case.call(
        base_url=fuzz_target.url, headers=fuzz_target.headers, timeout=REQUEST_TIMEOUT_S
    )
    summary = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
    assert response.status_code < 500, f"{summary}\n{_server_output()}"
    assert "Traceback" not in response.text, summary
    if response.status_code >= 400 and response.status_code != 304:
        (content_type,) = response.headers["content-type"]
        assert content_type.split(";")[0] == PROBLEM, summary
        body = response.json()
        assert isinstance(body.get("code"), str), summary
        assert body.get("status") == response.status_code, summary
