"""The Host check (issue 12): a request naming a host the server is not configured for is a
400 `host_not_allowed` problem before any route runs, so no URL the API builds (signed record
links) can name a host an attacker chose. Probes and /metrics are exempt: kubelets and scrapers
name the pod's address."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.kit.db import Database
from app.kit.middleware import AllowedHosts
from app.settings import Settings
from tests.fixtures.app import make_settings, running_app
from tests.fixtures.problems import assert_problem

EVIL = "evil.example.net"


async def test_a_foreign_host_is_a_400_problem_on_every_route(
    client: httpx.AsyncClient, database: Database
) -> None:
    for method, path in (
        ("GET", "/v1/specialties"),
        ("GET", "/v1/no-such-thing"),
        ("POST", "/v1/auth/token"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ):
        response = await client.request(method, path, headers={"Host": EVIL}, json={})
        body = assert_problem(response, 400, "host_not_allowed")
        assert EVIL not in response.text, "the answer does not echo the host"
        assert body["title"] == "Host not allowed"
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "host",
    [
        f"{EVIL}:8000",
        "carebook.test.evil.example.net",
        "evilcarebook.test",
        "carebook.test:abc",
        "[::2]:8000",
        "[::1",
        "[::1]8000",
        "",
    ],
)
async def test_near_misses_are_refused(
    client: httpx.AsyncClient, database: Database, host: str
) -> None:
    response = await client.get("/v1/specialties", headers={"Host": host})
    assert_problem(response, 400, "host_not_allowed")


@pytest.mark.parametrize(
    "host", ["carebook.test", "CareBook.Test", "carebook.test:8443", "127.0.0.1:8000", "[::1]:80"]
)
async def test_configured_hosts_pass_with_any_port_and_case(
    client: httpx.AsyncClient, database: Database, host: str
) -> None:
    response = await client.get("/v1/specialties", headers={"Host": host})
    assert response.status_code == 200, response.text


async def test_probes_and_metrics_answer_whatever_host_they_name(
    client: httpx.AsyncClient, database: Database
) -> None:
    pod = {"Host": "10.1.2.3:8000"}  # what a kubelet's httpGet probe sends
    for path in ("/health/live", "/health/ready", "/metrics"):
        response = await client.get(path, headers=pod)
        assert response.status_code == 200, (path, response.text)


async def test_wildcards(settings: Settings, database: Database) -> None:
    app_settings = make_settings(
        settings.database_url, settings.redis_url, allowed_hosts=["*.clinic.example.org"]
    )
    async with running_app(app_settings) as app:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:

            async def status(host: str) -> int:
                response = await client.get("/v1/specialties", headers={"Host": host})
                return response.status_code

            assert await status("api.clinic.example.org") == 200
            assert await status("a.b.clinic.example.org:443") == 200
            assert await status("clinic.example.org") == 400, "a subdomain pattern, not the apex"
            assert await status("carebook.test") == 400, "only what is configured"
            assert await status("xclinic.example.org") == 400

    anything = make_settings(settings.database_url, settings.redis_url, allowed_hosts=["*"])
    async with running_app(anything) as app:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            response = await client.get("/v1/specialties", headers={"Host": EVIL})
            assert response.status_code == 200, "`*` switches the check off"


def test_the_default_serves_the_local_demo_and_nothing_else() -> None:
    hosts = AllowedHosts(Settings().allowed_hosts)
    for local in (b"localhost:8000", b"127.0.0.1:8000", b"[::1]:8000", b"LOCALHOST"):
        assert hosts.allows(local), local
    for foreign in (EVIL.encode(), b"192.168.1.20:8000", b"localhost.evil.example.net"):
        assert not hosts.allows(foreign), foreign


@pytest.mark.parametrize(
    "value", [["https://api.example.org"], ["api.example.org:443"], [""], [], ["a/b"]]
)
def test_hosts_are_names_without_scheme_or_port(value: list[Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(allowed_hosts=value)


def test_names_are_normalised() -> None:
    settings = Settings(allowed_hosts=[" API.Example.org ", "::1", "[::1]"])
    assert settings.allowed_hosts == ["api.example.org", "[::1]", "[::1]"]
