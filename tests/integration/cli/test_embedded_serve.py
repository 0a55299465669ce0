"""`carebook serve` in embedded mode, for real: no database or Redis URL in the environment.

One module-scoped run keeps this fast: `serve --demo` starts embedded PostgreSQL and Redis under
a data folder of its own, migrates, seeds and serves; other commands share those servers while
it runs; Ctrl-C (SIGINT) stops everything; a second `serve` on the same folder reuses the data.

Then SIGTERM (what docker stop, Kubernetes and systemd send) and SIGINT, sent to `serve`,
`worker` and a long `seed --scale` on a second folder: each stops its API, worker and embedded
servers, leaves no process behind, and the next start on the folder works. So does a start
after a run that was killed outright and left its servers running.
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


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _processes_using(data_dir: Path) -> dict[int, str]:
    """Live processes whose command line or working directory names the data folder (or a path
    inside it)."""
    folder = str(data_dir)

    def names_it(text: str) -> bool:
        return text == folder or folder + "/" in text or text.startswith(folder + "/")

    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        args = _cmdline(pid)
        if (any(names_it(arg) for arg in args) or names_it(_cwd(pid))) and _is_alive(pid):
            found[pid] = " ".join(args)
    return found


def wait_until_nothing_uses(data_dir: Path, run: Run) -> None:
    """Every process of the folder ends (servers that outlive their command never would)."""
    deadline = time.monotonic() + STOP_DEADLINE_SECONDS
    while (left := _processes_using(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == {}, f"still running: {left}\n{run.describe()}"


def _postmaster_pid(data_dir: Path) -> int:
    pid_file = data_dir / "postgres" / "postmaster.pid"
    return int(pid_file.read_text().splitlines()[0])


def _redis_pids(data_dir: Path) -> list[int]:
    return [pid for pid, cmd in _processes_using(data_dir).items() if "redis-server" in cmd]


@dataclass
class Run:
    """One `carebook` command running in the background, its output in a log file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    command: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"carebook {self.command} (pid {self.process.pid}) log:\n{self.log()}"


@dataclass
class Serve(Run):
    port: int

    def describe(self) -> str:
        return f"port {self.port}, {super().describe()}"


@dataclass
class Embedded:
    data_dir: Path
    log_dir: Path
    runs: list[Run] = field(default_factory=list)
    serves: list[Serve] = field(default_factory=list)

    @property
    def current(self) -> Serve:
        return self.serves[-1]

    def _popen(self, command: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.log_dir / f"{command}-{len(self.runs) + 1}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(CAREBOOK), command, "--data-dir", str(self.data_dir), *args],
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return process, log_path

    def start_serve(self, *extra: str) -> Serve:
        port = _free_port()
        process, log_path = self._popen("serve", "--port", str(port), *extra)
        serve = Serve(process, log_path, "serve", port)
        self.runs.append(serve)
        self.serves.append(serve)
        return serve

    def start(self, command: str, *args: str) -> Run:
        """Any other command, in the background."""
        process, log_path = self._popen(command, *args)
        run = Run(process, log_path, command)
        self.runs.append(run)
        return run

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
        for run in self.runs:
            if run.process.poll() is None:
                run.process.send_signal(signal.SIGINT)
                try:
                    run.process.wait(STOP_DEADLINE_SECONDS)
                except subprocess.TimeoutExpired:
                    os.killpg(run.process.pid, signal.SIGKILL)
                    run.process.wait(10)
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


def wait_for_line(run: Run, text: str) -> None:
    """`text` appears in the command's output while it still runs."""
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    while text not in run.log():
        if run.process.poll() is not None:
            pytest.fail(f"exited with {run.process.returncode} before {text!r}\n{run.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} within {READY_DEADLINE_SECONDS:.0f} s\n{run.describe()}")
        time.sleep(0.1)


def stop_with(run: Run, signum: signal.Signals) -> int:
    run.process.send_signal(signum)
    try:
        return run.process.wait(STOP_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{run.command} did not stop within {STOP_DEADLINE_SECONDS:.0f} s of {signum.name}\n"
            f"{run.describe()}"
        )


def stop_with_sigint(serve: Serve) -> int:
    return stop_with(serve, signal.SIGINT)


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


# --- SIGTERM and SIGINT, for each long-running command, on a folder of their own --------------

STOP_SIGNALS = [pytest.param(signum, id=signum.name) for signum in (signal.SIGTERM, signal.SIGINT)]
SEED_SCALE_INTERRUPTED = 200_000  # seconds of work after its first line, on any machine


@pytest.fixture(scope="module")
def signals_data_dir() -> Iterator[Path]:
    data_dir = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))
    try:
        yield data_dir
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def signalled(signals_data_dir: Path, tmp_path: Path) -> Iterator[Embedded]:
    """The folder is shared (initialised once), the processes are each test's: every test
    leaves nothing running, and a failed one does not leak into the next."""
    run = Embedded(data_dir=signals_data_dir, log_dir=tmp_path)
    try:
        yield run
    finally:
        run.kill_everything()


def _in_order(log: str, *lines: str) -> bool:
    positions = [log.find(line) for line in lines]
    return -1 not in positions and positions == sorted(positions)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_a_stop_signal_stops_serve_its_worker_and_its_servers(
    signalled: Embedded, signum: signal.Signals
) -> None:
    serve = signalled.start_serve()
    wait_ready(serve)
    wait_for_line(serve, "worker started")
    postmaster = _postmaster_pid(signalled.data_dir)
    redis = _redis_pids(signalled.data_dir)
    assert redis, _processes_using(signalled.data_dir)

    code = stop_with(serve, signum)
    assert code == 0, f"serve exited with {code} on {signum.name}\n{serve.describe()}"
    wait_until_nothing_uses(signalled.data_dir, serve)
    assert not _is_alive(postmaster)
    assert not any(_is_alive(pid) for pid in redis)
    # The API (and the worker inside it) first, the servers after.
    assert _in_order(
        serve.log(), "Application shutdown complete", "done with the embedded servers"
    ), serve.describe()

    again = signalled.start_serve()
    ready = wait_ready(again)
    assert ready["database"] == "ok"
    assert ready["redis"] == "ok"
    assert stop_with(again, signum) == 0, again.describe()
    wait_until_nothing_uses(signalled.data_dir, again)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_a_stop_signal_stops_the_worker_and_its_servers(
    signalled: Embedded, signum: signal.Signals
) -> None:
    worker = signalled.start("worker")
    wait_for_line(worker, "worker started")
    assert _redis_pids(signalled.data_dir), _processes_using(signalled.data_dir)

    code = stop_with(worker, signum)
    assert code == 0, f"worker exited with {code} on {signum.name}\n{worker.describe()}"
    wait_until_nothing_uses(signalled.data_dir, worker)
    assert _in_order(worker.log(), "worker stopped", "done with the embedded servers"), (
        worker.describe()
    )

    again = signalled.start("worker")
    wait_for_line(again, "worker started")
    assert stop_with(again, signum) == 0, again.describe()
    wait_until_nothing_uses(signalled.data_dir, again)


def test_sigterm_cuts_a_long_seed_short_and_stops_its_servers(signalled: Embedded) -> None:
    seed = signalled.start("seed", "--scale", str(SEED_SCALE_INTERRUPTED))
    wait_for_line(seed, "Planning")  # inside its transaction, with the servers running

    code = stop_with(seed, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, f"seed exited with {code}\n{seed.describe()}"
    assert "Stopped by SIGTERM." in seed.log(), seed.describe()
    assert "Traceback" not in seed.log(), seed.describe()
    wait_until_nothing_uses(signalled.data_dir, seed)

    # The next run starts the servers again, and the interrupted load was rolled back whole.
    result = signalled.run_cli("seed", "--scale", "50")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Seeded 50 appointments" in result.stdout, result.stdout
    assert _processes_using(signalled.data_dir) == {}


def test_servers_left_by_a_killed_run_are_reused_then_stopped(signalled: Embedded) -> None:
    """A run killed outright (SIGKILL, an out-of-memory kill) cannot stop its servers; the next
    run takes them over and stops them when it ends."""
    crashed = signalled.start_serve()
    wait_ready(crashed)
    postmaster = _postmaster_pid(signalled.data_dir)
    redis = _redis_pids(signalled.data_dir)
    crashed.process.kill()  # the command only: its servers run in sessions of their own
    crashed.process.wait(STOP_DEADLINE_SECONDS)
    assert _is_alive(postmaster)
    assert redis
    assert all(_is_alive(pid) for pid in redis)

    serve = signalled.start_serve()
    ready = wait_ready(serve)
    assert ready["database"] == "ok"
    assert ready["redis"] == "ok"
    assert _postmaster_pid(signalled.data_dir) == postmaster  # reused, not a second server
    assert _redis_pids(signalled.data_dir) == redis

    assert stop_with(serve, signal.SIGTERM) == 0, serve.describe()
    wait_until_nothing_uses(signalled.data_dir, serve)


def test_the_last_command_to_stop_stops_the_shared_servers(signalled: Embedded) -> None:
    """`worker` next to `serve` shares its servers; stopping `serve` leaves them to the worker,
    which stops them when it is stopped in turn."""
    serve = signalled.start_serve()
    wait_ready(serve)
    postmaster = _postmaster_pid(signalled.data_dir)
    redis = _redis_pids(signalled.data_dir)
    worker = signalled.start("worker")
    wait_for_line(worker, "worker started")
    assert _redis_pids(signalled.data_dir) == redis  # shared, not a second one

    assert stop_with(serve, signal.SIGTERM) == 0, serve.describe()
    assert worker.process.poll() is None, worker.describe()
    assert _is_alive(postmaster)
    assert all(_is_alive(pid) for pid in redis)
    assert "worker lost redis" not in worker.log(), worker.describe()

    assert stop_with(worker, signal.SIGTERM) == 0, worker.describe()
    wait_until_nothing_uses(signalled.data_dir, worker)


def test_a_start_after_the_servers_were_killed_too_works(signalled: Embedded) -> None:
    """Everything killed outright leaves postmaster.pid, Redis's pid file and socket, and
    the lists of users behind; the next start copes with all of them."""
    crashed = signalled.start_serve()
    wait_ready(crashed)
    crashed.process.kill()
    crashed.process.wait(STOP_DEADLINE_SECONDS)
    for pid in _processes_using(signalled.data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert (signalled.data_dir / "postgres" / "postmaster.pid").exists()
    assert (signalled.data_dir / "redis" / "redis.sock").exists()

    serve = signalled.start_serve()
    ready = wait_ready(serve)
    assert ready["database"] == "ok"
    assert ready["redis"] == "ok"
    assert stop_with(serve, signal.SIGTERM) == 0, serve.describe()
    wait_until_nothing_uses(signalled.data_dir, serve)
