"""`GET /metrics`, and what it reads from the database at scrape time (the outbox's state).

The metric definitions and their exposition are `app.kit.metrics`, which everything imports;
what needs the database lives here, above the kit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.kit import outbox
from app.kit.db import Database
from app.kit.metrics import exposition

logger = logging.getLogger("carebook.metrics")


# --- The outbox, read at scrape time -------------------------------------------------------


@dataclass(frozen=True)
class OutboxSnapshot:
    backlog: int
    oldest: datetime | None
    dead_letters: int


class OutboxCollector(Collector):
    """Outbox backlog, age of its oldest pending event and dead letters.

    A scrape refreshes the snapshot at most every `ttl` seconds with one cheap indexed query
    under a short timeout, so scrapes cannot load the database. When the database does not
    answer, the families are left out (the scrape itself still succeeds) until it does.
    """

    def __init__(self, *, ttl: float = 5.0, timeout: float = 0.5) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._snapshot: OutboxSnapshot | None = None
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()

    async def refresh(self, database: Database) -> None:
        if time.monotonic() - self._read_at < self.ttl:
            return
        async with self._lock:
            if time.monotonic() - self._read_at < self.ttl:
                return
            self._read_at = time.monotonic()
            try:
                # A transaction: the statement timeout is `set_config(..., true)`.
                async with (
                    asyncio.timeout(self.timeout),
                    database.reading(primary=True, transaction=True) as s,
                ):
                    row = await outbox.pending_stats(s, timeout_ms=int(self.timeout * 1000))
            except Exception as exc:
                self._snapshot = None
                logger.warning("outbox metrics unavailable", extra={"error": type(exc).__name__})
                return
            self._snapshot = OutboxSnapshot(int(row.backlog), row.oldest, int(row.dead_letters))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snapshot = self._snapshot
        if snapshot is None:
            return
        yield GaugeMetricFamily(
            "carebook_outbox_backlog",
            "Outbox events not yet processed (dead letters excluded).",
            value=snapshot.backlog,
        )
        age = (
            max(0.0, (datetime.now(UTC) - snapshot.oldest).total_seconds())
            if snapshot.oldest is not None
            else 0.0
        )
        yield GaugeMetricFamily(
            "carebook_outbox_oldest_age_seconds",
            "Age of the oldest outbox event not yet processed (0 when there is none).",
            value=age,
        )
        yield GaugeMetricFamily(
            "carebook_outbox_dead_letters",
            "Outbox events given up on after the maximum number of deliveries.",
            value=snapshot.dead_letters,
        )


router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    collector: OutboxCollector | None = getattr(request.app.state, "outbox_metrics", None)
    database: Database | None = getattr(request.app.state, "database", None)
    if collector is not None and database is not None:
        await collector.refresh(database)
    return Response(
        exposition(collector),
        media_type=CONTENT_TYPE_LATEST,
        headers={"Cache-Control": "no-store"},
    )
