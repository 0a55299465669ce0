"""Response hardening (issue 12): `X-Content-Type-Options: nosniff` and a content-security
policy on every response, the docs pages with policies that allow exactly their own inline
scripts and refuse framing, and no `server: uvicorn` banner from the processes we start."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app import cli
from app.kit.db import Database
from app.settings import Settings, get_settings
from load import bench
from tests.fixtures.app import make_settings, running_app
from tests.fixtures.problems import assert_problem
from tests.fixtures.records import RECORD, CareTeam

API_CSP = "default-src 'none'; frame-ancestors 'none'"


def assert_hardened(response: httpx.Response, *, csp: str = API_CSP) -> None:
    assert response.headers.get_list("x-content-type-options") == ["nosniff"], response.headers
    assert response.headers.get_list("content-security-policy") == [csp], response.headers
    assert "server" not in response.headers


async def test_every_kind_of_answer_is_hardened(
    client: httpx.AsyncClient, database: Database
) -> None:
    answers = [
        await client.get("/v1/specialties"),  # 200 JSON, cacheable
        await client.get("/v1/no-such-thing"),  # the router's 404
        await client.get("/v1/me"),  # 401
        await client.post("/v1/auth/token", json={}),  # 422
        await client.post("/v1/auth/token", content=b"x" * 2_000_000),  # 413 before routing
        await client.get("/v1/specialties", headers={"Host": "evil.example.net"}),  # 400
        await client.get("/health/live"),
        await client.get("/metrics"),  # text/plain
        await client.get("/openapi.json"),
    ]
    assert [a.status_code for a in answers] == [200, 404, 401, 422, 413, 400, 200, 200, 200]
    for answer in answers:
        assert_hardened(answer)


async def test_a_500_and_a_429_are_hardened(settings: Settings, database: Database) -> None:
    tight = make_settings(
        settings.database_url,
        settings.redis_url,
        rate_limit_ip_per_second=0.01,
        rate_limit_ip_burst=1,
    )
    async with running_app(tight) as app:

        @app.get("/_probe/crash")
        async def crash() -> dict[str, str]:
            raise RuntimeError("boom")

        transport = httpx.ASGITransport(
            app=app, raise_app_exceptions=False, client=("10.250.0.7", 1)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://carebook.test") as c:
            crashed = await c.get("/_probe/crash")
            limited = await c.get("/_probe/crash")
    assert_problem(crashed, 500, "internal_error")
    assert_problem(limited, 429, "rate_limited")
    assert_hardened(crashed)
    assert_hardened(limited)


async def test_record_files_are_sent_once_with_nosniff(
    http: httpx.AsyncClient, team: CareTeam
) -> None:
    created = await http.post(team.records_path(), json=RECORD, headers=team.staff.headers)
    assert created.status_code == 201, created.text
    body = created.json()
    uploaded = await http.put(
        body["upload_url"], content=b"hello world", headers=body["upload_headers"]
    )
    assert uploaded.status_code == 204, uploaded.text
    listed = await http.get(team.records_path(), headers=team.staff.headers)
    download = await http.get(listed.json()["items"][0]["download_url"])
    assert download.status_code == 200, download.text
    assert download.content == b"hello world"
    assert_hardened(download)


def _directives(policy: str) -> dict[str, list[str]]:
    return {
        name: values
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_docs_pages_have_a_policy_of_their_own(client: httpx.AsyncClient, path: str) -> None:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    policies = page.headers.get_list("content-security-policy")
    assert len(policies) == 1, "the API's policy does not pile up on the page's"
    directives = _directives(policies[0])
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["default-src"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    scripts = directives["script-src"]
    assert "'unsafe-inline'" not in scripts
    assert "'unsafe-eval'" not in scripts
    # Exactly the page's own inline scripts may run, and every one of them can.
    inline = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", page.text, flags=re.DOTALL)
    ]
    assert inline or path == "/redoc", "Swagger UI's pages have inline scripts"
    assert sorted(s for s in scripts if s.startswith("'sha256-")) == sorted(inline)
    # Every script the page loads comes from a source the policy names.
    for src in re.findall(r'<script src="([^"]+)"', page.text):
        assert any(src.startswith(source) for source in scripts), src
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_the_swagger_page_still_points_at_the_schema(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert "url: '/openapi.json'" in page.text
    assert "/docs/oauth2-redirect" in page.text
    redoc = await client.get("/redoc")
    assert 'spec-url="/openapi.json"' in redoc.text


# --- no server banner ---------------------------------------------------------------------


def test_carebook_serve_starts_uvicorn_without_banner_and_trusting_no_proxy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`carebook serve` with external servers configured: what it hands uvicorn."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    for name in ("CAREBOOK_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CAREBOOK_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    monkeypatch.setenv("CAREBOOK_REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("CAREBOOK_DATA_DIR", str(tmp_path))
    try:
        cli.serve(host="127.0.0.1", port=8000, workers=1, data_dir=None, demo=False)
    finally:
        get_settings.cache_clear()
    [kwargs] = calls
    assert kwargs["server_header"] is False
    assert kwargs["forwarded_allow_ips"] == "", "no proxy is trusted unless configured"


def test_the_benchmark_runs_uvicorn_without_banner() -> None:
    assert "--no-server-header" in bench.server_command("app.main:app_factory", 8000, 1)


async def test_uvicorn_with_that_option_sends_no_server_header(app: FastAPI) -> None:
    """The option does what we rely on, over a socket (uvicorn adds the banner itself)."""
    # Bound and listening before uvicorn starts: connections wait in the backlog, no polling.
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", server_header=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as real:
            response = await real.get("/health/live")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()
    assert response.status_code == 200
    assert_hardened(response)
