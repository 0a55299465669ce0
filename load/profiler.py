"""py-spy on the server under test, and a summary of where its samples fall."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH; None when not installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record_profile(pid: int, delay_s: float, seconds: float, output: Path) -> bool:
    """py-spy on the server after the warm-up, collapsed stacks to `output`: samples of the
    thread holding the GIL, taken without pausing the server."""
    executable = py_spy()
    if executable is None:
        print("  py-spy is not installed: no profile", file=sys.stderr, flush=True)
        return False
    await asyncio.sleep(delay_s)
    process = await asyncio.create_subprocess_exec(
        executable,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        "100",
        "--format",
        "raw",
        "--subprocesses",
        "--gil",  # only samples holding the GIL: Python work, not idle pool threads
        "--nonblocking",
        "--output",
        str(output),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(process.wait(), seconds + 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode == 0


@dataclass(frozen=True)
class ProfileSummary:
    samples: int
    self_by_package: list[tuple[str, int]]  # where the sampled frame itself was
    inclusive_by_package: list[tuple[str, int]]  # stacks that pass through the package
    self_by_function: list[tuple[str, int]]


def _package(frame: str) -> str:
    """`execute (sqlalchemy/engine/base.py:1)` -> `sqlalchemy`; app code -> `app/<domain>`."""
    location = frame.rsplit(" (", 1)[-1].rstrip(")")
    path = location.rsplit(":", 1)[0]
    parts = path.split("/")
    if parts[0] in {"app", "load", "workers"} and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0]


def summarize_profile(path: Path, top: int = 10) -> ProfileSummary:
    """Self and inclusive sample counts by package, and the hottest functions, from py-spy's
    raw (collapsed-stack) output."""
    samples = 0
    own: dict[str, int] = {}
    through: dict[str, int] = {}
    functions: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if " (" in f and not f.startswith("process ")]
        if not frames:
            continue
        samples += count
        leaf = frames[-1]
        own[_package(leaf)] = own.get(_package(leaf), 0) + count
        functions[leaf] = functions.get(leaf, 0) + count
        for package in {_package(frame) for frame in frames}:
            through[package] = through.get(package, 0) + count

    def ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(counts.items(), key=lambda item: -item[1])[:top]

    return ProfileSummary(samples, ranked(own), ranked(through), ranked(functions))


def render_profile(scenario: str, summary: ProfileSummary) -> list[str]:
    def share(count: int) -> str:
        return f"{count / summary.samples * 100:.0f} %" if summary.samples else "-"

    own = ", ".join(f"{name} {share(n)}" for name, n in summary.self_by_package)
    through = ", ".join(f"{name} {share(n)}" for name, n in summary.inclusive_by_package)
    hottest = ", ".join(f"`{name}` {share(n)}" for name, n in summary.self_by_function[:5])
    return [
        f"- **{scenario}** ({summary.samples} samples of the GIL holder at 100 Hz)",
        f"  - self time by package: {own}",
        f"  - stacks through package: {through}",
        f"  - hottest frames: {hottest}",
        "",
    ]
