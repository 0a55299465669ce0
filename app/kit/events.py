"""In-process delivery of domain events after commit.

Every change emits its event through `app.kit.outbox.emit`, which writes the outbox row (for the
worker) and, once the transaction has committed, hands the event to this process's subscribers,
such as cache invalidation. Subscribers must be quick and must not raise.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("carebook.events")

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[tuple[str, Handler]] = []

    def subscribe(self, topic_prefix: str, handler: Handler) -> None:
        self._subscribers.append((topic_prefix, handler))

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        for prefix, handler in self._subscribers:
            if topic.startswith(prefix):
                try:
                    await handler(topic, payload)
                except Exception:
                    logger.exception("event subscriber failed", extra={"topic": topic})
