"""What the runner reads from the machine: CPU seconds of the servers and of PostgreSQL's
backends (Linux /proc), a summary of the machine, and the commit the code that ran is at."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = ("app", "load", "workers", "alembic", "pyproject.toml")  # what a run depends on


def _read(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            list(command), capture_output=True, text=True, check=False, cwd=REPO_ROOT, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_summary() -> str:
    """Cores (`nproc`), memory (`free -g`) and CPU model, read now."""
    cores = _read(["nproc"]) or str(os.cpu_count())
    memory = ""
    for line in _read(["free", "-g"]).splitlines():
        if line.startswith("Mem:"):
            memory = f"{line.split()[1]} GiB (`free -g`)"
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    parts = [f"{cores} cores (`nproc`)", memory or "memory unknown", model, platform.system()]
    return ", ".join(part for part in parts if part)


def commit_summary() -> str:
    """`git rev-parse --short HEAD`, flagged when the code that ran differs from it."""
    commit = _read(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    changed = _read(["git", "status", "--porcelain", "--", *CODE_PATHS])
    return f"{commit} + uncommitted changes" if changed else commit


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc), for CPU accounting."""
    found = [pid]
    for current in found:
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with suppress(OSError):
                found.extend(int(child) for child in children.read_text().split())
    return found


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` and its live descendants; None where /proc is absent."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for member in _process_tree(pid):
            with suppress(FileNotFoundError, ProcessLookupError):
                stat = Path(f"/proc/{member}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return total / ticks


def _proc_cpu_ticks(pid: str) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def database_cpu_ticks(database: str) -> dict[int, int] | None:
    """CPU ticks by pid of the PostgreSQL backends connected to `database` (their process
    titles name it), on this machine; None where /proc is absent."""
    try:
        entries = [entry.name for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except OSError:
        return None
    needle = f" {database} ".encode()
    found = {}
    for pid in entries:
        with suppress(OSError, ValueError, IndexError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
            if title.startswith(b"postgres: ") and needle in title.replace(b"\0", b" "):
                found[int(pid)] = _proc_cpu_ticks(pid)
    return found


def reaped_backend_ticks() -> int | None:
    """CPU ticks of the PostgreSQL postmaster's exited children (`cutime` + `cstime`), found as
    the parent of a process titled `postgres: `; None where there is none or no /proc."""
    try:
        entries = [entry.name for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except OSError:
        return None
    for pid in entries:
        with suppress(OSError, ValueError, IndexError):
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres: "):
                continue
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            fields = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[13]) + int(fields[14])
    return None


def database_cpu_seconds(
    before: Mapping[int, int] | None,
    after: Mapping[int, int] | None,
    reaped_before: int | None = None,
    reaped_after: int | None = None,
) -> float | None:
    """CPU seconds the backends spent between two snapshots: what each live one added, and all
    of those that started meanwhile. With the postmaster's reaped-children ticks of both
    snapshots, backends that exited in between count too: SQLAlchemy's pool closes overflow
    connections it cannot queue and opens new ones under load, and most of a saturated run's
    statements ran on backends gone by its end (then every exited backend of the server counts,
    whichever its database: the machine's other work can add to it)."""
    if before is None or after is None:
        return None
    ticks = sum(value - before.get(pid, 0) for pid, value in after.items())
    if reaped_before is not None and reaped_after is not None:
        exited_before = sum(value for pid, value in before.items() if pid not in after)
        ticks += reaped_after - reaped_before - exited_before
    return max(ticks, 0) / os.sysconf("SC_CLK_TCK")
