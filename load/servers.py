"""The server under test: a uvicorn subprocess on a free 127.0.0.1 port with Carebook's
production settings (or a baseline app with the same flags), ready before it is used and always
stopped; its log scanned for warnings and errors, and its cache counters scraped from /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import IO

from load.client import LOOPBACK, build_request, fetch
from load.machine import REPO_ROOT
from load.runs import BenchConfig

LOG_SCAN_BYTES = 2_000_000
_PROBLEM_LEVELS = {"warning", "error", "critical"}
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
_CACHE_SAMPLE = re.compile(
    r"^carebook_cache_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)", re.MULTILINE
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(
    config: BenchConfig,
    *,
    cache_enabled: bool,
    database_url: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of the API process: the caller's, minus any CAREBOOK_*, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBOOK_")}
    env.update(
        {
            "CAREBOOK_DATABASE_URL": database_url or config.database_url,
            "CAREBOOK_REDIS_URL": config.redis_url,
            "CAREBOOK_ENVIRONMENT": "production",
            "CAREBOOK_JWT_SECRET": secrets.token_urlsafe(36),  # 48 characters
            "CAREBOOK_RATE_LIMIT_ENABLED": "false",
            "CAREBOOK_LOG_LEVEL": "WARNING",
            "CAREBOOK_CACHE_ENABLED": "true" if cache_enabled else "false",
            **(extra or {}),
        }
    )
    return env


def server_command(app: str, port: int, workers: int) -> list[str]:
    """The uvicorn command line, identical for Carebook and the baseline apart from the app
    (`load.serve`: several workers each on their own socket, as `carebook serve` runs them)."""
    return [
        sys.executable,
        "-m",
        "load.serve",
        app,
        "--factory",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--no-server-header",  # as `carebook serve`
    ]


@dataclass
class Server:
    process: asyncio.subprocess.Process
    port: int
    log: IO[bytes]

    def log_tail(self, limit: int = 4000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:]

    def log_problems(self, since: int = 0) -> dict[str, int]:
        """Warnings and errors the server logged so far (after byte `since`), by message."""
        self.log.flush()
        self.log.seek(since)
        return log_problems(self.log.read(LOG_SCAN_BYTES).decode(errors="replace"))

    def log_offset(self) -> int:
        """Where the log ends now: start-up messages are not the load's."""
        self.log.flush()
        return self.log.seek(0, os.SEEK_END)


def log_problems(text: str) -> dict[str, int]:
    """Count WARNING/ERROR lines by message: Carebook's JSON lines and uvicorn's plain ones."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        message = None
        if line.startswith("{"):
            with suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("level") in _PROBLEM_LEVELS:
                    message = str(entry.get("message", ""))
                    if entry.get("error"):  # e.g. the exception type of a failed Redis call
                        message += f" ({entry['error']})"
        else:
            level, sep, rest = line.partition(":")
            if sep and level.strip().lower() in _PROBLEM_LEVELS:
                message = rest.strip()
        if message is not None:
            message = message[:80]
            found[message] = found.get(message, 0) + 1
    return found


async def _wait_ready(server: Server) -> None:
    probe = build_request("GET", "/health/ready", port=server.port)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.returncode is not None:
            raise RuntimeError(
                f"the server exited with status {server.process.returncode}:\n{server.log_tail()}"
            )
        with suppress(Exception):  # not listening yet, or answering garbage while starting
            response = await fetch(server.port, probe, limit_s=2.0)
            if response.status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the server was not ready in {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


async def _stop(server: Server) -> None:
    """SIGINT (uvicorn shuts down gracefully), then SIGKILL to its session after a deadline."""
    process = server.process
    try:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            with suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        if process.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: uvicorn and workers
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    finally:
        server.log.close()


@asynccontextmanager
async def serving(
    app: str,
    config: BenchConfig,
    *,
    cache_enabled: bool,
    env: Mapping[str, str] | None = None,
    workers: int | None = None,
) -> AsyncIterator[Server]:
    """A uvicorn subprocess on a free 127.0.0.1 port, ready; always stopped on the way out."""
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _stop
    try:
        process = await asyncio.create_subprocess_exec(
            *server_command(app, port, workers or config.workers),
            cwd=REPO_ROOT,
            env=dict(env) if env is not None else server_env(config, cache_enabled=cache_enabled),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    server = Server(process, port, log)
    try:
        await _wait_ready(server)
        yield server
    finally:
        await _stop(server)


def parse_cache_counters(text: str, cache: str) -> dict[str, float]:
    """`{"hit": n, "miss": m}` of `carebook_cache_requests_total{cache=...}` in Prometheus text."""
    counts: dict[str, float] = {}
    for sample in _CACHE_SAMPLE.finditer(text):
        labels = dict(_LABEL.findall(sample["labels"]))
        if labels.get("cache") == cache and "result" in labels:
            counts[labels["result"]] = counts.get(labels["result"], 0.0) + float(sample["value"])
    return counts


async def scrape_cache(port: int, cache: str) -> dict[str, float]:
    response = await fetch(port, build_request("GET", "/metrics", port=port), limit_s=5.0)
    if response.status != 200:
        raise RuntimeError(f"GET /metrics answered {response.status}")
    return parse_cache_counters(response.body.decode(), cache)


def hit_rate(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """Hits over lookups between two scrapes of the cache counters."""
    hits = after.get("hit", 0.0) - before.get("hit", 0.0)
    misses = after.get("miss", 0.0) - before.get("miss", 0.0)
    return hits / (hits + misses) if hits + misses > 0 else None
