"""Benchmark datasets of a given size, loaded with COPY."""

from __future__ import annotations

import typer

from app.settings import Settings


async def seed_scale(settings: Settings, appointments: int) -> None:
    raise typer.BadParameter("--scale is not available yet; use --demo")
