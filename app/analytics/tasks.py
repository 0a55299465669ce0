"""Jobs that keep `clinic_daily_stats` exact: the outbox handler, the rebuild and its cron.

The handler recomputes the (clinic, day) rows an appointment event touches from `appointments`
(never +1/-1), so ARQ's at-least-once delivery, a late event or two events in the wrong order
all end with the same rows. The nightly rebuild repairs anything else (a row written by SQL by
hand, a clinic moved to another time zone), a month per transaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

from app.analytics import service
from app.kit.db import Database
from app.kit.outbox import Event
from app.settings import Settings

logger = logging.getLogger("carebook.analytics")

# The whole history, a month per transaction: ~30 s at 10 M appointments.
REBUILD_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class RebuildSummary:
    first: date | None
    last: date | None
    chunks: int
    rows: int
    seconds: float


async def refresh_clinic_stats(ctx: dict[str, Any], event: Event) -> None:
    """Outbox handler: recompute the days this appointment event touches."""
    database: Database = ctx["database"]
    async with database.unit_of_work() as session:
        await service.refresh_for_event(session, event.payload)


async def rebuild_stats(
    database: Database, first: date | None = None, last: date | None = None
) -> RebuildSummary:
    """Recompute `first`..`last` (default: every date with appointments or stats rows), one
    month per transaction so each statement stays well under its timeout."""
    started = time.monotonic()
    if first is None or last is None:
        async with database.reading(primary=True) as session:
            extent = await service.rebuild_extent(session)
        if extent is None:
            return RebuildSummary(first, last, 0, 0, time.monotonic() - started)
        first = first or extent[0]
        last = last or extent[1]
    chunks = service.month_chunks(first, last)
    rows = 0
    for chunk_first, chunk_last in chunks:
        async with database.unit_of_work() as session:
            rows += await service.rebuild_chunk(session, chunk_first, chunk_last)
    summary = RebuildSummary(first, last, len(chunks), rows, time.monotonic() - started)
    logger.info(
        "clinic stats rebuilt",
        extra={"first": str(first), "last": str(last), "rows": rows, "seconds": summary.seconds},
    )
    return summary


async def rebuild_with_settings(
    settings: Settings, first: date | None = None, last: date | None = None
) -> RebuildSummary:
    """`rebuild_stats` on a database of its own (the CLI and `seed --scale`)."""
    assert settings.database_url is not None
    database = Database.connect(settings, settings.database_url)
    try:
        return await rebuild_stats(database, first, last)
    finally:
        await database.dispose()


async def rebuild_clinic_stats(ctx: dict[str, Any]) -> dict[str, Any]:
    """Cron (nightly): the whole table again from `appointments`."""
    summary = await rebuild_stats(ctx["database"])
    return {"chunks": summary.chunks, "rows": summary.rows, "seconds": round(summary.seconds, 1)}
