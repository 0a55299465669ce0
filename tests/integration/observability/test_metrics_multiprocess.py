"""/metrics under several uvicorn processes: values live in PROMETHEUS_MULTIPROC_DIR and any
process's scrape reports them all (real separate Python processes, as `serve --workers N`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import _multiprocess_metrics
from tests.fixtures.observability import Metrics

REPO = Path(__file__).resolve().parents[3]

# One "uvicorn worker": serves a request to /v1/x, holds one in flight, sees a breaker state;
# `exit` marks the process dead the way the app's lifespan does on a graceful shutdown.
WORKER = """
import sys
from app.kit.metrics import (
    BREAKER_STATE, HTTP_IN_FLIGHT, HTTP_REQUESTS, exposition, mark_process_dead,
)
HTTP_REQUESTS.labels("GET", "/v1/x", "200").inc()
HTTP_IN_FLIGHT.inc()
BREAKER_STATE.labels("videosdk").set(float(sys.argv[1]))
if sys.argv[2] == "exit":
    mark_process_dead()
else:
    sys.stdout.write(exposition().decode())
"""


def run_worker(folder: Path, breaker: int, mode: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(breaker), mode],
        cwd=REPO,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_processes_share_their_values(tmp_path: Path) -> None:
    run_worker(tmp_path, breaker=2, mode="stay")  # died without marking itself dead
    metrics = Metrics(run_worker(tmp_path, breaker=0, mode="scrape"))

    assert metrics.value("carebook_http_requests_total", route="/v1/x", status="200") == 2
    assert metrics.value("carebook_http_requests_in_flight") == 2
    # The worst breaker state over the processes.
    assert metrics.value("carebook_circuit_breaker_state", service="videosdk") == 2


def test_a_process_that_shut_down_leaves_its_counters_but_not_its_gauges(
    tmp_path: Path,
) -> None:
    run_worker(tmp_path, breaker=2, mode="exit")
    metrics = Metrics(run_worker(tmp_path, breaker=0, mode="scrape"))

    assert metrics.value("carebook_http_requests_total", route="/v1/x", status="200") == 2
    assert metrics.value("carebook_http_requests_in_flight") == 1
    assert metrics.value("carebook_circuit_breaker_state", service="videosdk") == 0


def test_without_the_folder_a_process_reports_only_itself(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    script = WORKER.replace('if sys.argv[2] == "exit":', "if False:")
    first = subprocess.run(
        [sys.executable, "-c", script, "2", "scrape"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    metrics = Metrics(first)
    assert metrics.value("carebook_http_requests_total", route="/v1/x", status="200") == 1
    assert not list(tmp_path.iterdir())


def test_serve_with_several_workers_gets_a_fresh_folder_per_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with _multiprocess_metrics(1):
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    folders = []
    for _ in range(2):
        with _multiprocess_metrics(4):
            folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
            assert folder.is_dir()
            assert not list(folder.iterdir())
            folders.append(folder)
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
        assert not folder.exists()
    assert folders[0] != folders[1]
