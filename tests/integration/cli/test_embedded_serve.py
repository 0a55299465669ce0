"""`carebook serve` in embedded mode, for real: no database or Redis URL in the environment.

One module-scoped run keeps this fast: `serve --demo` starts embedded PostgreSQL and Redis under
a data folder of its own, migrates, seeds and serves; other commands share those servers while
it runs; Ctrl-C (SIGINT) stops everything; a second `serve` on the same folder reuses the data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.seed import DEMO_PASSWORD

CAREBOOK = Path(sys.executable).parent / "carebook"
READY_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 30.0
CLI_TIMEOUT_SECONDS = 180.0
DEMO_PATIENT = "patient01@example.com"


def _env() -> dict[str, str]:
    """The caller's environment minus every CAREBOOK_* variable: embedded mode, nothing shared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBOOK_")}
    env["CAREBOOK_ENVIRONMENT"] = "development"
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _http(port: int) -> httpx.Client:
    # trust_env=False: never route 127.0.0.1 through a proxy from the environment.
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0, trust_env=False)


# --- processes ----------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has finished and counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in {"Z", "X"}


def _processes_using(data_dir: Path) -> dict[int, str]:
    """Live processes whose command line names the data folder (or a path inside it)."""
    folder = str(data_dir)
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        args = _cmdline(int(entry.name))
        if any(arg == folder or folder + "/" in arg for arg in args) and _is_alive(int(entry.name)):
            found[int(entry.name)] = " ".join(args)
    return found


def _postmaster_pid(data_dir: Path) -> int:
    pid_file = data_dir / "postgres" / "postmaster.pid"
    return int(pid_file.read_text().splitlines()[0])


def _redis_pids(data_dir: Path) -> list[int]:
    return [pid for pid, cmd in _processes_using(data_dir).items() if "redis-server" in cmd]


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"carebook serve (pid {self.process.pid}, port {self.port}) log:\n{self.log()}"


@dataclass
class Embedded:
    data_dir: Path
    log_dir: Path
    runs: list[Serve] = field(default_factory=list)

    @property
    def current(self) -> Serve:
        return self.runs[-1]

    def start_serve(self, *extra: str) -> Serve:
        port = _free_port()
        log_path = self.log_dir / f"serve-{len(self.runs) + 1}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(CAREBOOK),
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(port),
                    *extra,
                ],
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        serve = Serve(process, port, log_path)
        self.runs.append(serve)
        return serve

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CAREBOOK), *args, "--data-dir", str(self.data_dir)],
            env=_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            check=False,
        )

    def kill_everything(self) -> None:
        """Teardown: stop what is still running, gently first, and every server we caused."""
        for serve in self.runs:
            if serve.process.poll() is None:
                serve.process.send_signal(signal.SIGINT)
                try:
                    serve.process.wait(STOP_DEADLINE_SECONDS)
                except subprocess.TimeoutExpired:
                    os.killpg(serve.process.pid, signal.SIGKILL)
                    serve.process.wait(10)
        # Servers left behind by a failed run (started by our serve processes, so ours to end).
        for pid in _processes_using(self.data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_ready(serve: Serve) -> dict[str, Any]:
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    last = "no answer yet"
    with _http(serve.port) as http:
        while time.monotonic() < deadline:
            if serve.process.poll() is not None:
                pytest.fail(f"serve exited with {serve.process.returncode}\n{serve.describe()}")
            try:
                response = http.get("/health/ready", timeout=2.0)
            except httpx.HTTPError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    body: dict[str, Any] = response.json()
                    return body
                last = f"{response.status_code} {response.text}"
            time.sleep(0.25)
    pytest.fail(
        f"not ready within {READY_DEADLINE_SECONDS:.0f} s (last: {last})\n{serve.describe()}"
    )


def stop_with_sigint(serve: Serve) -> int:
    serve.process.send_signal(signal.SIGINT)
    try:
        return serve.process.wait(STOP_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"serve did not stop within {STOP_DEADLINE_SECONDS:.0f} s of SIGINT\n{serve.describe()}"
        )


def login(port: int, email: str, password: str) -> httpx.Response:
    with _http(port) as http:
        return http.post("/v1/auth/token", json={"email": email, "password": password})


def me(port: int, access_token: str) -> httpx.Response:
    with _http(port) as http:
        return http.get("/v1/me", headers={"Authorization": f"Bearer {access_token}"})


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    # Short path: the Redis and PostgreSQL Unix sockets live under it (~100 bytes at most).
    data_dir = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))
    run = Embedded(data_dir=data_dir, log_dir=tmp_path_factory.mktemp("embedded-logs"))
    try:
        wait_ready(run.start_serve("--demo"))
        yield run
    finally:
        run.kill_everything()
        shutil.rmtree(data_dir, ignore_errors=True)


# --- the tests, in the order of an operator's session ------------------------------------------


def test_serve_is_ready_with_embedded_database_and_redis(embedded: Embedded) -> None:
    serve = embedded.current
    with _http(serve.port) as http:
        ready = http.get("/health/ready")
        live = http.get("/health/live")
    assert ready.status_code == 200, serve.describe()
    assert ready.json()["database"] == "ok", ready.text
    assert ready.json()["redis"] == "ok", ready.text
    assert live.status_code == 200
    # Both servers run under the data folder, on Unix sockets.
    assert _is_alive(_postmaster_pid(embedded.data_dir))
    assert _redis_pids(embedded.data_dir), _processes_using(embedded.data_dir)
    assert (embedded.data_dir / "redis" / "redis.sock").exists()
    # Embedded mode runs the job worker inside the API process.
    assert "worker started" in serve.log(), serve.describe()


def test_demo_logins_are_printed(embedded: Embedded) -> None:
    log = embedded.current.log()
    assert DEMO_PATIENT in log, embedded.current.describe()
    assert DEMO_PASSWORD in log
    assert "admin@example.com" in log
    assert f"http://127.0.0.1:{embedded.current.port}" in log


def test_demo_patient_gets_tokens(embedded: Embedded) -> None:
    port = embedded.current.port
    response = login(port, DEMO_PATIENT, DEMO_PASSWORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["access_token"]
    assert body["refresh_token"]
    profile = me(port, body["access_token"])
    assert profile.status_code == 200, profile.text
    assert profile.json()["email"] == DEMO_PATIENT
    assert profile.json()["role"] == "patient"


def test_demo_runs_the_whole_pipeline_against_the_local_fakes(embedded: Embedded) -> None:
    """`--demo` points VideoSDK and FCM at fake servers on 127.0.0.1: a booking gets its room
    and its push without any third party."""
    port = embedded.current.port
    token = login(port, DEMO_PATIENT, DEMO_PASSWORD).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    with _http(port) as http:
        ready = http.get("/health/ready").json()
        assert set(ready["integrations"]) == {"videosdk", "fcm"}, ready
        assert "disabled" not in ready["integrations"].values(), ready
        device = {"token": f"demo-phone-{uuid.uuid4().hex}", "platform": "android"}
        assert http.post("/v1/me/devices", json=device, headers=headers).status_code == 201
        provider = http.get("/v1/providers").json()["items"][0]
        today = time.strftime("%Y-%m-%d")
        last = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 14 * 86400))
        slots = http.get(
            f"/v1/providers/{provider['id']}/availability", params={"from": today, "to": last}
        ).json()["slots"]
        booked = http.post(
            "/v1/appointments",
            json={"provider_id": provider["id"], "start": slots[0]["start"]},
            headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
        )
        assert booked.status_code == 201, booked.text
        video: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            video = http.get(
                f"/v1/appointments/{booked.json()['id']}/video", headers=headers
            ).json()
            feed = http.get("/v1/me/notifications", headers=headers).json()["items"]
            if video["status"] == "ready" and feed:
                break
            time.sleep(0.2)
        assert video["status"] == "ready", embedded.current.describe()
        assert video["join_url"].startswith("http://127.0.0.1:")
        assert http.get(video["join_url"]).status_code == 200  # the fake's meeting page
        assert [n["kind"] for n in feed] == ["booked"]


def test_migrate_on_the_same_data_dir_while_serving(embedded: Embedded) -> None:
    postmaster = _postmaster_pid(embedded.data_dir)
    result = embedded.run_cli("migrate")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    # The command shared the running servers and left them running.
    assert embedded.current.process.poll() is None, embedded.current.describe()
    assert _postmaster_pid(embedded.data_dir) == postmaster
    assert _is_alive(postmaster)
    with _http(embedded.current.port) as http:
        ready = http.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == "ok"
    assert ready.json()["redis"] == "ok"


def test_create_user_on_the_same_data_dir_while_serving(embedded: Embedded) -> None:
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    result = embedded.run_cli(
        "create-user", "--email", email, "--password", "operator-pass-1", "--role", "admin"
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert email in result.stdout
    assert embedded.current.process.poll() is None, embedded.current.describe()
    token = login(embedded.current.port, email, "operator-pass-1")
    assert token.status_code == 200, token.text
    profile = me(embedded.current.port, token.json()["access_token"])
    assert profile.json()["role"] == "admin"
    with _http(embedded.current.port) as http:
        assert http.get("/health/ready").status_code == 200


def test_sigint_stops_everything_and_a_restart_reuses_the_data(embedded: Embedded) -> None:
    first = embedded.current
    email = f"returning-{uuid.uuid4().hex[:8]}@example.com"
    with _http(first.port) as http:
        registered = http.post(
            "/v1/auth/register",
            json={"email": email, "password": "patient-pass-1", "full_name": "Returning Patient"},
        )
    assert registered.status_code == 201, registered.text
    token = login(first.port, email, "patient-pass-1")
    assert token.status_code == 200, token.text
    access_token = token.json()["access_token"]

    postmaster = _postmaster_pid(embedded.data_dir)
    redis = _redis_pids(embedded.data_dir)
    assert redis, _processes_using(embedded.data_dir)

    code = stop_with_sigint(first)
    assert code == 0, f"serve exited with {code} on SIGINT\n{first.describe()}"
    assert _processes_using(embedded.data_dir) == {}, first.describe()
    assert not _is_alive(postmaster)
    assert not any(_is_alive(pid) for pid in redis)

    second = embedded.start_serve()  # no --demo this time
    ready = wait_ready(second)
    assert ready["database"] == "ok"
    assert ready["redis"] == "ok"
    # The patient registered before the restart, and the demo data, are still there.
    again = login(second.port, email, "patient-pass-1")
    assert again.status_code == 200, again.text
    assert login(second.port, DEMO_PATIENT, DEMO_PASSWORD).status_code == 200
    # The per-installation JWT secret is kept too: a token issued before the restart still works.
    profile = me(second.port, access_token)
    assert profile.status_code == 200, profile.text
    assert profile.json()["email"] == email

    code = stop_with_sigint(second)
    assert code == 0, f"serve exited with {code} on SIGINT\n{second.describe()}"
    assert _processes_using(embedded.data_dir) == {}, second.describe()
