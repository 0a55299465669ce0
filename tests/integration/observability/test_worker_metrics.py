"""`carebook worker` (a real subprocess) serves its own metrics when asked to."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import httpx

from app.kit.db import Database
from app.settings import Settings
from tests.fixtures.observability import Metrics
from tests.fixtures.worker import wait_for

CAREBOOK = Path(sys.executable).parent / "carebook"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_the_worker_exports_job_metrics_on_its_port(
    settings: Settings, database: Database
) -> None:
    assert settings.database_url is not None
    assert settings.redis_url is not None
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBOOK_")}
    env.update(
        CAREBOOK_ENVIRONMENT="development",
        CAREBOOK_DATABASE_URL=settings.database_url,
        CAREBOOK_REDIS_URL=settings.redis_url,
        CAREBOOK_WORKER_METRICS_PORT=str(port),
    )
    process = await asyncio.create_subprocess_exec(
        str(CAREBOOK),
        "worker",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    scraped: list[Metrics] = []

    async def sweeper_ran() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                response = await http.get(f"http://127.0.0.1:{port}/")
        except httpx.TransportError:
            return False
        metrics = Metrics(response.text)
        scraped.append(metrics)
        # The outbox sweeper runs at worker start.
        return (metrics.value("carebook_job_runs_total", job="sweep_outbox") or 0) >= 1

    try:
        await wait_for(sweeper_ran, within=60.0, interval=0.2, what="the worker's metrics")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()

    metrics = scraped[-1]
    assert metrics.value("carebook_job_duration_seconds_count", job="sweep_outbox")
    assert metrics.value("carebook_job_failures_total", job="sweep_outbox") == 0
    assert metrics.has_family("carebook_db_pool_connections_in_use", "gauge")
    assert process.returncode == 0
