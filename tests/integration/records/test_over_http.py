"""The local backend's signed URLs over a real socket (uvicorn): a file larger than the API's
request-body limit streams up in chunks, and comes back whole."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tests.fixtures.records import RECORD, CareTeam

CHUNK = b"0123456789abcdef" * 4096  # 64 KiB


@pytest.fixture
async def base_url(records_app: FastAPI) -> AsyncIterator[str]:
    # Bound and listening before uvicorn starts: connections wait in the backlog, no polling.
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(records_app, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


async def test_a_large_file_streams_up_and_down(
    records_app: FastAPI, base_url: str, team: CareTeam
) -> None:
    chunks = 40  # 2.5 MiB: above the 1 MiB request limit, below the record limit
    size = len(CHUNK) * chunks
    assert size > records_app.state.settings.max_body_bytes
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        created = await http.post(
            team.records_path(),
            json={**RECORD, "content_type": "application/pdf", "size_bytes": size},
            headers=team.staff.headers,
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["upload_url"].startswith(f"{base_url}/v1/files/")

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(chunks):
                yield CHUNK

        put = await http.put(body["upload_url"], content=stream(), headers=body["upload_headers"])
        assert put.status_code == 204, put.text

        (item,) = (await http.get(team.records_path(), headers=team.patient.headers)).json()[
            "items"
        ]
        digest = hashlib.sha256()
        received = 0
        async with http.stream("GET", item["download_url"]) as download:
            assert download.status_code == 200
            assert download.headers["content-type"] == "application/pdf"
            async for part in download.aiter_bytes():
                digest.update(part)
                received += len(part)
        assert received == size
        assert digest.hexdigest() == hashlib.sha256(CHUNK * chunks).hexdigest()
