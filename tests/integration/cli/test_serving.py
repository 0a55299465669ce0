"""Several uvicorn workers, each listening on its own `SO_REUSEPORT` socket (app.kit.serving),
run for real as separate processes through `python -m load.serve`, the runner's way of running
what `carebook serve --workers N` runs: every worker takes connections, a worker that dies is
replaced by one with its own socket, and a port in use fails the start at once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.kit import serving
from tests.fixtures.worker import wait_for

REPO = Path(__file__).resolve().parents[3]
DEADLINE_SECONDS = 60.0

pytestmark = pytest.mark.skipif(not serving.balanced(), reason="SO_REUSEPORT balancing is Linux's")


async def _pid(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


def pid_app() -> Starlette:
    """The app each worker serves: it answers with the process id of the worker."""
    return Starlette(routes=[Route("/", _pid)])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port (state 0A in /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return sum(
            1
            for line in table.readlines()[1:]
            if line.split()[1] == wanted and line.split()[3] == "0A"
        )


@contextmanager
def _serving(port: int, workers: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "load.serve",
            "tests.integration.cli.test_serving:pid_app",
            "--factory",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def _pids_over(port: int, connections: int) -> set[str]:
    """The workers that answered on `connections` connections open at the same time (none
    while a connection fails: a worker just killed took it)."""
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE_SECONDS, trust_env=False
                )
            )
            for _ in range(connections)
        ]
        try:
            answers = await asyncio.gather(*(client.get("/") for client in clients))
        except httpx.TransportError:
            return set()
        return {answer.text for answer in answers}


async def _listening(port: int, count: int) -> None:
    async def listening() -> bool:
        return _listeners(port) == count

    await wait_for(listening, within=DEADLINE_SECONDS, what=f"{count} listening sockets")


async def test_every_worker_listens_on_its_own_socket_and_takes_connections() -> None:
    port = _free_port()
    with _serving(port, workers=2):
        await _listening(port, 2)
        # New connections are spread by a hash of their addresses: over 64 of them, both
        # workers answer (the odds of one taking all are 2 in 2^64).
        assert len(await _pids_over(port, 64)) == 2


async def test_a_worker_that_dies_is_replaced_by_one_with_its_own_socket() -> None:
    port = _free_port()
    with _serving(port, workers=2):
        await _listening(port, 2)
        first = await _pids_over(port, 64)
        os.kill(int(next(iter(first))), signal.SIGKILL)

        async def replaced() -> bool:
            return _listeners(port) == 2 and len(await _pids_over(port, 64) - first) == 1

        await wait_for(
            replaced, within=DEADLINE_SECONDS, what="a new worker listening beside the one left"
        )


def test_a_port_in_use_fails_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with _serving(port, workers=2) as process:
            assert process.wait(DEADLINE_SECONDS) != 0
