"""Which committed events make which cached values stale: each domain declares it for its own
topics, next to them; this gathers the declarations for the API and the worker, which hand
them to their `Cache` and subscribe it to their topics."""

from __future__ import annotations

from typing import Final

from app.appointments import events as appointment_events
from app.auth import principals
from app.catalog import service as catalog
from app.kit.cache import Staleness
from app.schedules import service as schedules

STALENESS: Final[tuple[Staleness, ...]] = (
    appointment_events.STALENESS,
    *schedules.STALENESS,
    *catalog.STALENESS,
    principals.STALENESS,
)
TOPICS: Final = tuple(declared.prefix for declared in STALENESS)
