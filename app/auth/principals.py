"""Who the caller is *now*: the current state of each authenticated user (issue 12 §4).

An access token only proves which user signed in. Whether that account still exists and is
active, its role and a staff member's clinic are read from the database, so a deactivation or a
demotion does not wait for the token to expire. The state is kept in process memory for a few
seconds (`CAREBOOK_PRINCIPAL_CACHE_SECONDS`): a request whose user was seen recently costs no
statement and no Redis call. An entry is dropped as soon as this process commits a change to
that user (the `user.` outbox events reach `on_events` through the in-process event bus); a
change committed by another process takes effect here when the entry expires. A miss is one
primary-key read on the primary, outside any transaction. See ADR 0008.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Final

from cachetools import TTLCache
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import repository
from app.kit.cache import Staleness
from app.kit.events import Events
from app.kit.metrics import PRINCIPAL_READS
from app.models import Role

# Events that change what `PrincipalCache` holds; each payload names its `user_id`.
USER_TOPICS: Final = "user."
USER_CHANGED: Final = "user.changed"
USER_DELETED: Final = "user.deleted"
# A user's change may rename or remove a provider: its profile.
STALENESS: Final = Staleness(USER_TOPICS, by_user=True)
# Marks the connections of the state reads (an execution option), so statement counters can
# tell the authentication step's read from the statements of the code they measure.
STATE_READ_OPTION: Final = "carebook_principal_read"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated, active user as the database knows them at most a few seconds ago."""

    user_id: uuid.UUID
    role: Role
    clinic_id: uuid.UUID | None = None  # a staff member's clinic


class PrincipalCache:
    """Per-process, per-user state for the authentication step, with the database behind it.

    `get` answers None for a user that does not exist or is not active (absence is cached too,
    so a flood of requests with a deleted user's token does not become a flood of reads).
    Concurrent misses for one user share one read.
    """

    def __init__(
        self, engine: AsyncEngine, *, ttl_seconds: float, max_entries: int = 50_000
    ) -> None:
        # One statement needs no transaction: autocommit spares the BEGIN and ROLLBACK trips.
        self._engine = engine.execution_options(
            isolation_level="AUTOCOMMIT", **{STATE_READ_OPTION: True}
        )
        # A TTL of 0 turns the cache off: every request reads the database.
        self._entries: TTLCache[uuid.UUID, Principal | None] | None = (
            TTLCache(maxsize=max_entries, ttl=ttl_seconds) if ttl_seconds > 0 else None
        )
        self._loading: dict[uuid.UUID, asyncio.Task[Principal | None]] = {}
        # Bumped by every invalidation: a read that started before one must not be cached
        # after it (it may have seen the row as it was before the change).
        self._epoch = 0

    async def get(self, user_id: uuid.UUID) -> Principal | None:
        # The hot path: one lookup (`TTLCache.get` would make two) and no metric (an increment
        # costs more than the lookup); misses are counted, they are the ones that read.
        if self._entries is not None:
            try:
                return self._entries[user_id]
            except KeyError:
                pass
        PRINCIPAL_READS.inc()
        task = self._loading.get(user_id)
        if task is None:
            # A task of its own, shielded: a caller that goes away (client disconnect) must
            # not cancel the read the other callers wait for.
            task = asyncio.get_running_loop().create_task(self._load(user_id))
            task.add_done_callback(partial(self._loaded, user_id))
            self._loading[user_id] = task
        return await asyncio.shield(task)

    async def _load(self, user_id: uuid.UUID) -> Principal | None:
        epoch = self._epoch
        async with self._engine.connect() as connection:
            row = await repository.get_user_state(connection, user_id)
        principal = (
            Principal(user_id=user_id, role=Role(row.role), clinic_id=row.clinic_id)
            if row is not None and row.is_active
            else None
        )
        if self._entries is not None and epoch == self._epoch:
            self._entries[user_id] = principal
        return principal

    def _loaded(self, user_id: uuid.UUID, task: asyncio.Task[Principal | None]) -> None:
        if self._loading.get(user_id) is task:
            del self._loading[user_id]
        if not task.cancelled():
            task.exception()  # retrieved here; the callers that awaited it re-raise it

    def invalidate(self, user_ids: Iterable[uuid.UUID]) -> None:
        """Forget these users: their next request reads the database."""
        self._epoch += 1
        for user_id in user_ids:
            if self._entries is not None:
                self._entries.pop(user_id, None)
            # A read in flight may predate the change: later callers start a new one.
            self._loading.pop(user_id, None)

    async def on_events(self, events: Events) -> None:
        """Event-bus subscriber for `USER_TOPICS`."""
        user_ids: list[uuid.UUID] = []
        for _topic, payload in events:
            try:
                user_ids.append(uuid.UUID(str(payload["user_id"])))
            except (KeyError, ValueError):
                continue
        self.invalidate(user_ids)
