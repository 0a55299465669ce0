"""In-process delivery of domain events after commit.

Every change emits its event through `app.kit.outbox.emit`, which writes the outbox row (for the
worker) and, once the transaction has committed, hands the event to this process's subscribers,
such as cache invalidation. Subscribers must be quick and must not raise.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

logger = logging.getLogger("carebook.events")

Events = Sequence[tuple[str, dict[str, Any]]]
# A subscriber gets all of one transaction's matching events at once, so a bulk change of 500
# appointments costs it one call (one Redis round trip for the cache), not 500.
Handler = Callable[[Events], Awaitable[None]]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[tuple[str, Handler]] = []

    def subscribe(self, topic_prefix: str, handler: Handler) -> None:
        self._subscribers.append((topic_prefix, handler))

    async def publish(self, events: Events) -> None:
        for prefix, handler in self._subscribers:
            matching = [event for event in events if event[0].startswith(prefix)]
            if not matching:
                continue
            try:
                await handler(matching)
            except Exception:
                logger.exception("event subscriber failed", extra={"topic": matching[0][0]})
