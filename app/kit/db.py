"""Database engines and the request/job unit of work.

Session types exist so a read that tolerates replica lag can say so in its signature:

* `WriteSession` — the primary; committed by the boundary (request dependency or job context)
  when the handler returns, rolled back when it raises. Services and repositories only flush.
* `ReadSession` — the replica when `CAREBOOK_DATABASE_REPLICA_URL` is set, else the primary;
  never committed. For reads that tolerate lag (catalogue, past appointments).
* `PrimaryReadSession` — the primary, never committed: reads that must see the latest commit
  (availability, anything on the booking path).
* `ReadTransaction` — like `ReadSession`, inside a transaction that is rolled back: for reads
  that need transaction-scoped state (`SET LOCAL`, `set_config(..., true)`), such as analytics.

Read requests that run only `kit.sql` statements open `Database.reader()` instead: a pooled
connection without an ORM session (`sql.Reader`), the same autocommit reads at half the CPU.

Read sessions run in autocommit: each statement is its own implicit transaction, so a read
sends its statement and nothing else (no `BEGIN`, no `ROLLBACK`, no pre-ping). Under READ
COMMITTED every statement takes its own snapshot anyway, so autocommit changes what several
statements of one read see not at all. Reads and writes of an engine share its one pool.

There is no pre-ping: the first statement of a session that finds its pooled connection dead
is run once more on a fresh connection (see `RetryingSession`), and the disconnect makes the
pool replace every connection older than it on their next checkout.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeAlias

from fastapi import Depends, Request
from prometheus_client import Gauge
from sqlalchemy import URL, Connection, Row, Select, event, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from app.kit import sql, telemetry
from app.kit.errors import AppError
from app.kit.events import EventBus
from app.kit.metrics import (
    DB_POOL_IN_USE,
    DB_POOL_OVERFLOW,
    DB_POOL_SIZE,
    DB_POOL_WAIT_SECONDS,
    DB_POOL_WAITS,
    DB_SLOW_STATEMENTS,
)
from app.settings import Settings

logger = logging.getLogger("carebook.db")
slow_logger = logging.getLogger("carebook.db.slow")


def async_url(url: str) -> URL:
    """Normalise any PostgreSQL URL to the asyncpg driver."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed


class InstrumentedPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio queue pool, publishing its use to Prometheus as it changes: in use,
    overflow, and the checkouts that had to wait for a connection (and for how long).

    The engine's `pool_logging_name` (its role, `primary` or `replica`) is the `engine` label.
    """

    def _do_get(self) -> ConnectionPoolEntry:
        label = self.logging_name or "primary"
        # The queue blocks only when no connection is idle and no overflow is left.
        waits = (
            self._max_overflow > -1
            and self.overflow() >= self._max_overflow
            and self.checkedin() == 0
        )
        started = time.perf_counter()
        try:
            return super()._do_get()
        finally:
            if waits:
                DB_POOL_WAITS.labels(label).inc()
                DB_POOL_WAIT_SECONDS.labels(label).observe(time.perf_counter() - started)
            self._publish()

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            self._publish()

    def dispose(self) -> None:
        super().dispose()
        self._publish(retract=True)

    # What this pool last added to the gauges: several pools share a label in one process
    # (the API's and the in-process worker's primary), so each adds its own share.
    _published: tuple[int, int, int] = (0, 0, 0)
    # The gauges' children for this pool's label, looked up once: `labels()` on every checkout
    # and return cost a read request more than its pool did.
    _children: tuple[Gauge, Gauge, Gauge] | None = None

    def _publish(self, *, retract: bool = False) -> None:
        children = self._children
        if children is None:
            label = self.logging_name or "primary"
            children = self._children = (
                DB_POOL_SIZE.labels(label),  # each exists (at 0) from the first checkout on
                DB_POOL_IN_USE.labels(label),
                DB_POOL_OVERFLOW.labels(label),
            )
        now = (0, 0, 0) if retract else (self.size(), self.checkedout(), max(0, self.overflow()))
        for child, new, old in zip(children, now, self._published, strict=True):
            if new != old:
                child.inc(new - old)
        self._published = now


_STARTED = "carebook_statement_started"
_WHITESPACE = re.compile(r"\s+")


def _log_slow_statements(engine: AsyncEngine, *, role: str, threshold_ms: int) -> None:
    """Log statements slower than the threshold with their duration and SQL text only: the
    parameters (which may hold personal data) are never logged."""

    # One start per connection, not a stack: its statements run one after another, and a
    # statement that failed (no `after`) leaves nothing behind that the next would not replace.
    def before(conn: Connection, *args: Any) -> None:
        conn.info[_STARTED] = time.perf_counter()

    def after(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        started: float = conn.info.pop(_STARTED, None) or time.perf_counter()
        elapsed_ms = (time.perf_counter() - started) * 1000
        if elapsed_ms >= threshold_ms:
            DB_SLOW_STATEMENTS.labels(role).inc()
            slow_logger.warning(
                "slow statement",
                extra={
                    "engine": role,
                    "duration_ms": round(elapsed_ms, 1),
                    "statement": _WHITESPACE.sub(" ", statement).strip()[:2000],
                },
            )

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    event.listen(engine.sync_engine, "after_cursor_execute", after)


def connection_settings(settings: Settings, *, role: str) -> dict[str, str]:
    """The PostgreSQL settings every Carebook connection starts with (the load runner's raw
    baselines take them too, so that they measure the same server-side work)."""
    return {
        "application_name": f"{settings.db_application_name}-{role}",
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "lock_timeout": str(settings.db_lock_timeout_ms),
        "idle_in_transaction_session_timeout": "60000",
        "timezone": "UTC",
        "plan_cache_mode": settings.db_plan_cache_mode,
        # Carebook's statements are short; a generic plan's row estimates (a date series of
        # unknown length counts as 1,000 rows) can cross jit_above_cost, and compiling then
        # costs a second where running costs milliseconds.
        "jit": "off",
        # Parallel workers are for scans of much of a table (the nightly statistics rebuild
        # asks for them); for a request they are processes to start on cores the other
        # requests need. A generic plan does not know a LIMIT's value and estimated a staff
        # listing at 10 M appointments as a scan worth two workers: 8 ms of PostgreSQL CPU per
        # page instead of 0.6.
        "max_parallel_workers_per_gather": "0",
    }


def create_engine(url: str, settings: Settings, *, role: str) -> AsyncEngine:
    server_settings = connection_settings(settings, role=role)
    parsed = async_url(url)
    # An explicit application_name in the URL (e.g. a replica alias) wins over ours.
    if "application_name" in parsed.query:
        server_settings["application_name"] = str(parsed.query["application_name"])
        parsed = parsed.difference_update_query(["application_name"])
    connect_args: dict[str, Any] = {
        "server_settings": server_settings,
        "timeout": settings.db_connect_timeout_seconds,
    }
    engine = create_async_engine(
        parsed,
        poolclass=InstrumentedPool,
        pool_logging_name=role,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=settings.db_pool_recycle_seconds,
        pool_pre_ping=settings.db_pool_pre_ping,
        connect_args=connect_args,
        # A logged database error must not carry the statement's values (emails, names).
        hide_parameters=True,
    )
    if settings.slow_statement_ms > 0:
        _log_slow_statements(engine, role=role, threshold_ms=settings.slow_statement_ms)
    telemetry.instrument_engine(engine)
    sql.register_engine(engine.sync_engine, traced=telemetry.tracing())
    return engine


class RetryingSession(Session):
    """A session whose first statement is run once more, on a fresh connection, when its
    pooled connection turns out to be dead (the server restarted, or a proxy or firewall
    dropped the idle connection): what a pre-ping on every checkout buys, at no cost to the
    statements that find their connection alive.

    Only a statement that opens the session's work is retried: nothing has run on that
    connection yet, nothing is pending in the session, so running it again is the same
    request; a transaction that broke later is lost and answered 503 as before. A write
    whose first statement is a flush (pending objects) is not retried either.
    """

    def _first_statement(self) -> bool:
        return not self.in_transaction() and not self.identity_map and not self.new

    def _retrying(self, run: Callable[[], Any]) -> Any:
        if not self._first_statement():
            return run()
        try:
            return run()
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            logger.info("dead pooled connection replaced", extra={"error": type(exc).__name__})
            # The invalidated connection is released (nothing is sent on it), so the statement
            # checks out another; the pool has already dropped every connection as old.
            self.rollback()
            return run()

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(lambda: super(RetryingSession, self).execute(*args, **kwargs))

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(lambda: super(RetryingSession, self).scalar(*args, **kwargs))

    def scalars(self, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(lambda: super(RetryingSession, self).scalars(*args, **kwargs))


def _sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=RetryingSession)


def _autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool, its connections in autocommit while checked out: asyncpg then
    sends no `BEGIN`, and the rollback at the end of a session and the pool's reset on return
    have no transaction to end, so they send nothing either."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


@dataclass
class Database:
    """The engines and session factories of one process, created in the lifespan."""

    primary: AsyncEngine
    replica: AsyncEngine | None
    # Transactional, on the primary: the unit of work (and reads that need a transaction).
    write_sessions: async_sessionmaker[AsyncSession]
    # Autocommit, on the replica when there is one, else the primary.
    read_sessions: async_sessionmaker[AsyncSession]
    # Autocommit, on the primary.
    primary_read_sessions: async_sessionmaker[AsyncSession]
    # Transactional, on the replica when there is one, else the primary (rolled back).
    read_transactions: async_sessionmaker[AsyncSession]
    # Receives each committed event in this process (see app.kit.outbox).
    events: EventBus | None = None

    @classmethod
    def connect(
        cls, settings: Settings, database_url: str, *, events: EventBus | None = None
    ) -> Database:
        primary = create_engine(database_url, settings, role="primary")
        replica = (
            create_engine(settings.database_replica_url, settings, role="replica")
            if settings.database_replica_url
            else None
        )
        return cls(
            primary=primary,
            replica=replica,
            write_sessions=_sessions(primary),
            read_sessions=_sessions(_autocommit(replica or primary)),
            primary_read_sessions=_sessions(_autocommit(primary)),
            read_transactions=_sessions(replica or primary),
            events=events,
        )

    async def dispose(self) -> None:
        await self.primary.dispose()
        if self.replica is not None:
            await self.replica.dispose()

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """A write session that commits when the block succeeds and rolls back when it raises.

        This is the boundary for jobs and CLI commands; requests use `get_write_session`, or
        open it in the handler (the booking and the cancellation, the most frequent writes).
        Callbacks registered with `after_commit` run once the commit has succeeded.
        """
        async with self.write_sessions() as session:
            session.info[_EVENT_BUS] = self.events
            try:
                yield session
            except AppError as exc:
                if exc.commits:
                    await session.commit()
                    await _run_after_commit(session)
                else:
                    await session.rollback()
                raise
            except BaseException:
                await session.rollback()
                raise
            await session.commit()
            await _run_after_commit(session)

    @asynccontextmanager
    async def reader(self, *, primary: bool = False) -> AsyncIterator[sql.Executor]:
        """What `reading` gives, for reads made only of `kit.sql` statements: a pooled
        connection without a session (a session while tracing, so that its spans are made)."""
        engine = self.primary if primary or self.replica is None else self.replica
        if sql.traced(engine.sync_engine):
            async with self.reading(primary=primary) as session:
                yield session
            return
        reader = sql.Reader(engine.sync_engine)
        try:
            yield reader
        finally:
            await reader.close()

    @asynccontextmanager
    async def reading(
        self, *, primary: bool = False, transaction: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """A session that never commits: the replica (when configured) or, with `primary`,
        the primary for reads that must not lag (availability, the booking path).

        In autocommit unless `transaction`: then its statements share one transaction, rolled
        back at the end, for reads that set transaction-scoped settings (`SET LOCAL`)."""
        if not transaction:
            factory = self.primary_read_sessions if primary else self.read_sessions
            async with factory() as session:
                yield session  # closing it releases the connection; there is nothing to end
            return
        factory = self.write_sessions if primary else self.read_transactions
        async with factory() as session:
            try:
                yield session
            finally:
                await session.rollback()


_AFTER_COMMIT = "carebook_after_commit"
_EVENT_BUS = "carebook_event_bus"


def event_bus_of(session: AsyncSession) -> EventBus | None:
    bus = session.info.get(_EVENT_BUS)
    return bus if isinstance(bus, EventBus) else None


def after_commit(session: AsyncSession, callback: Callable[[], Awaitable[None]]) -> None:
    """Run `callback` after this session's transaction commits (never if it rolls back).

    For effects that must not be seen before the data is, such as bumping a cache version:
    bumped earlier, a reader could cache the old rows under the new version.
    """
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def discard_after_commit(session: AsyncSession) -> None:
    """Forget the callbacks registered so far: for a transaction rolled back by hand inside a
    request that still succeeds (an idempotent replay), whose effects are gone and so must
    be their follow-ups."""
    session.info.pop(_AFTER_COMMIT, None)


async def _run_after_commit(session: AsyncSession) -> None:
    callbacks: list[Callable[[], Awaitable[None]]] = session.info.pop(_AFTER_COMMIT, [])
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            # The data is committed; a failed follow-up must not turn success into an error.
            logger.exception("after-commit callback failed")


# Dependencies are `async def` even when they only read app.state: FastAPI runs plain `def`
# dependencies in a thread pool, which cost a quarter of the CPU of a cache hit.
async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_write_session(
    database: Annotated[Database, Depends(get_database)],
) -> AsyncIterator[AsyncSession]:
    async with database.unit_of_work() as session:
        yield session


async def get_read_session(
    database: Annotated[Database, Depends(get_database)],
) -> AsyncIterator[AsyncSession]:
    async with database.reading() as session:
        yield session


async def get_primary_read_session(
    database: Annotated[Database, Depends(get_database)],
) -> AsyncIterator[AsyncSession]:
    async with database.reading(primary=True) as session:
        yield session


async def get_read_transaction(
    database: Annotated[Database, Depends(get_database)],
) -> AsyncIterator[AsyncSession]:
    async with database.reading(transaction=True) as session:
        yield session


# scope="function": the commit runs when the handler returns and *before* the response is sent,
# so a failed commit becomes an error response instead of following a 2xx already on the wire
# (FastAPI's default "request" scope exits after sending).
WriteSession = Annotated[AsyncSession, Depends(get_write_session, scope="function")]
ReadSession = Annotated[AsyncSession, Depends(get_read_session, scope="function")]
PrimaryReadSession = Annotated[AsyncSession, Depends(get_primary_read_session, scope="function")]
ReadTransaction = Annotated[AsyncSession, Depends(get_read_transaction, scope="function")]
# For reads made of `kit.sql` statements: the handler opens `Database.reader()` itself, where
# it needs one. A generator dependency (a session's) costs FastAPI a context and a shielded
# exit per request: a tenth of a listing's CPU for two of them, and a cached profile's for a
# reader it never used.
DatabaseDep = Annotated[Database, Depends(get_database)]


def violated_constraint(exc: DBAPIError) -> str | None:
    """The name of the constraint an IntegrityError violated, as asyncpg reports it."""
    cause = getattr(exc.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None) or getattr(exc.orig, "constraint_name", None)
    return name if isinstance(name, str) else None


# A result row of any shape (SQLAlchemy 2.1 types rows by their column tuple).
AnyRow: TypeAlias = Row[*tuple[Any, ...]]
AnySelect: TypeAlias = Select[*tuple[Any, ...]]
