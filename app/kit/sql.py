"""Hot-path statements, run on the asyncpg connection underneath a session.

SQLAlchemy's execution path (ORM execute, compiled-cache lookup, a greenlet hop each way,
cursor emulation, result processing) costs about 0.6 ms of CPU per statement on a 2-core
machine where asyncpg itself needs 0.05-0.25 ms: a booking's eight statements spent more in it
than in everything else the request does. A `Statement` is compiled by SQLAlchemy once, at
import, for the asyncpg dialect, and runs on the driver connection the session already holds:
one pool, the session's own transaction (begun exactly as SQLAlchemy would begin it), and the
request or job boundary still the only place that commits.

What SQLAlchemy would otherwise do for these statements is kept: asyncpg errors become the
same `sqlalchemy.exc` errors (so constraint names, the 503 handlers and the dead-connection
retry see what they always saw), a dead connection is invalidated, the first statement of a
session is retried once on a fresh connection, and the engine's cursor events fire (the
slow-statement log listens to them). With tracing on,
statements go through the session instead, so that its instrumentation sees them.

Read requests need no session at all: a `Reader` checks out a connection from the same pool
and runs their statements on it in autocommit, with the same errors, retry and cursor events,
for about 0.17 ms of CPU where a read session costs 0.4 (`Executor` is either).

Rows are asyncpg records that also answer attribute access (`row.tz`), like SQLAlchemy rows.
Values come as asyncpg decodes them: `uuid` columns as asyncpg's `UUID` (a `uuid.UUID`
subclass that orjson does not serialise; cast to text in SQL what goes straight to JSON), enum
and text columns as `str`, `json`/`jsonb` decoded by the codecs SQLAlchemy installs.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, cast

import asyncpg  # type: ignore[import-untyped]  # no stubs, no py.typed
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.pool import Pool, PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.expression import Executable
from sqlalchemy.util import greenlet_spawn

logger = logging.getLogger("carebook.db")

_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
_DRIVER = "carebook_driver_connection"
_BOUND = "carebook_bound_connection"


# Whether each engine is traced, by its pool (shared with its `execution_options` variants,
# such as the autocommit one).
_TRACED: weakref.WeakKeyDictionary[Pool, bool] = weakref.WeakKeyDictionary()


class Record(asyncpg.Record):
    """An asyncpg record whose columns are also attributes, as on a SQLAlchemy row."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Statement:
    """A Core or `text()` statement compiled once for asyncpg: its SQL with `$n` placeholders
    and the order in which its named parameters fill them."""

    def __init__(self, clause: Executable) -> None:
        compiled = cast("SQLCompiler", cast("ClauseElement", clause).compile(dialect=_DIALECT))
        self.clause = clause
        self.sql = str(compiled)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Parameters whose type needs SQLAlchemy's conversion (JSON, enums by name) would be
        # sent unconverted here: such statements stay on the session.
        if compiled._bind_processors:
            raise TypeError(f"{self.names} need bind processing; run it through the session")

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


def register_engine(engine: Engine, *, traced: bool) -> None:
    """Run `Statement`s on this engine's connections directly, or through its sessions while
    `traced` (an engine never registered runs them through its sessions too)."""
    _TRACED[engine.pool] = traced


def traced(engine: Engine) -> bool:
    """Whether statements on this engine must go through a session (its tracing sees them)."""
    return _TRACED.get(engine.pool, True)


class Reader:
    """A read request's connection without an ORM session: checked out of the engine's pool at
    the first statement, in autocommit (asyncpg sends no BEGIN, and the pool's reset on return
    has nothing to roll back), returned by `close`.

    It keeps what a read session gives its statements: SQLAlchemy's errors, the first
    statement run once more on a fresh connection when its pooled one is dead (which also
    marks every older connection of the pool for replacement, as SQLAlchemy does), and the
    engine's cursor events. Only for `Statement`s; anything else needs a session.
    """

    __slots__ = ("_connection", "_engine", "_pooled")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pooled: PoolProxiedConnection | None = None
        self._connection: Connection | None = None  # for the engine's listeners only

    async def run(self, statement: Statement, params: Mapping[str, Any]) -> list[Any]:
        args = statement.args(params)
        if self._pooled is not None:
            return await self._execute(self._pooled, statement, args)
        pooled = await self._checkout()
        try:
            return await self._execute(pooled, statement, args)
        except sa_exc.DBAPIError as error:
            if not error.connection_invalidated:
                raise
            logger.info("dead pooled connection replaced", extra={"error": type(error).__name__})
            return await self._execute(await self._checkout(), statement, args)

    async def close(self) -> None:
        pooled, self._pooled, self._connection = self._pooled, None, None
        if pooled is not None:
            await greenlet_spawn(pooled.close)

    async def _checkout(self) -> PoolProxiedConnection:
        # In a greenlet: the pool may have to connect, or wait for a connection to come back.
        pooled = await greenlet_spawn(self._engine.pool.connect)
        self._pooled = pooled
        self._connection = Connection(self._engine, connection=pooled)
        return pooled

    async def _execute(
        self, pooled: PoolProxiedConnection, statement: Statement, args: list[Any]
    ) -> list[Any]:
        connection = self._connection
        assert connection is not None
        dispatch = connection.dispatch
        dispatch.before_cursor_execute(connection, None, statement.sql, args, None, False)
        try:
            rows: list[Any] = await pooled.driver_connection.fetch(  # type: ignore[union-attr]
                statement.sql, *args, record_class=Record
            )
        except BaseException as error:
            raise await self._failed(pooled, statement, args, error) from error
        dispatch.after_cursor_execute(connection, None, statement.sql, args, None, False)
        return rows

    async def _failed(
        self,
        pooled: PoolProxiedConnection,
        statement: Statement,
        args: list[Any],
        error: BaseException,
    ) -> BaseException:
        if not isinstance(error, Exception):
            # Cancelled mid-statement: the connection's state is unknown, so it is not reused.
            self._pooled = self._connection = None
            await greenlet_spawn(pooled.invalidate, error)
            return error
        dialect = self._engine.dialect
        wrapped, dbapi_error = _dbapi(dialect, pooled.dbapi_connection, error)
        if wrapped is None:
            return error
        disconnect = dialect.is_disconnect(wrapped, pooled.dbapi_connection, None)  # type: ignore[arg-type]
        if disconnect:
            self._pooled = self._connection = None
            await greenlet_spawn(self._engine.pool._invalidate, pooled, wrapped)
        return _wrapped(statement, args, wrapped, dbapi_error, dialect, disconnect=disconnect)


# What a repository's read runs on: a session (writes, and reads inside a unit of work) or a
# `Reader` (read requests).
Executor: TypeAlias = AsyncSession | Reader


# `before_begin`: a read that needs no transaction of its own. When the session has sent no
# BEGIN yet (nothing written so far), it runs in autocommit on the session's connection and the
# transaction begins with the next statement; inside a begun transaction it runs there. Under
# READ COMMITTED each statement takes its own snapshot either way, so what it sees is the same;
# a request that ends with such reads alone (a booking refused at once) then sends neither
# BEGIN nor ROLLBACK. A `Reader` is in autocommit anyway.


async def fetch(
    executor: Executor,
    statement: Statement,
    params: Mapping[str, Any],
    *,
    before_begin: bool = False,
) -> list[Any]:
    """Every row of the statement, run in the session's transaction (or on the reader)."""
    rows = await _run(executor, statement, params, before_begin)
    return cast("list[Any]", rows)


async def fetchrow(
    executor: Executor,
    statement: Statement,
    params: Mapping[str, Any],
    *,
    before_begin: bool = False,
) -> Any | None:
    """The first row of the statement (None when there is none)."""
    rows = await _run(executor, statement, params, before_begin)
    return rows[0] if rows else None


async def fetchval(
    executor: Executor,
    statement: Statement,
    params: Mapping[str, Any],
    *,
    before_begin: bool = False,
) -> Any:
    """The first column of the first row (None when there is no row)."""
    rows = await _run(executor, statement, params, before_begin)
    return rows[0][0] if rows else None


async def _run(
    executor: Executor, statement: Statement, params: Mapping[str, Any], before_begin: bool
) -> Sequence[Any]:
    if isinstance(executor, Reader):
        return await executor.run(statement, params)
    session = executor
    # As RetryingSession: only a statement that opens the session's work may run again.
    first = not session.in_transaction() and not session.identity_map and not session.new
    try:
        return await _on_driver(session, statement, params, before_begin)
    except sa_exc.DBAPIError as error:
        if not (first and error.connection_invalidated):
            raise
        await session.rollback()  # releases the invalidated connection; the pool has a new one
        return await _on_driver(session, statement, params, before_begin)


async def _on_driver(
    session: AsyncSession, statement: Statement, params: Mapping[str, Any], before_begin: bool
) -> Sequence[Any]:
    connection = await _connection(session)
    if _TRACED.get(connection.sync_engine.pool, True):
        result = await session.execute(statement.clause, dict(params))
        returned = cast("CursorResult[Any]", result).returns_rows
        return result.all() if returned else []
    driver, adapted = await _driver(connection)
    args = statement.args(params)
    # The engine's listeners see the statement as one of theirs (the slow-statement log, the
    # tests' statement counters); `cursor` and `context` are SQLAlchemy's own, so None here.
    sync_connection = connection.sync_connection
    assert sync_connection is not None
    dispatch = sync_connection.dispatch
    dispatch.before_cursor_execute(sync_connection, None, statement.sql, args, None, False)
    try:
        async with adapted._execute_mutex:
            if adapted._transaction is None and not before_begin:
                # What SQLAlchemy's cursor does before its first statement: BEGIN, unless the
                # session is in autocommit. Without it these statements would run outside the
                # transaction the boundary commits.
                await adapted._start_transaction()
            rows: list[Any] = await driver.fetch(statement.sql, *args, record_class=Record)
    except Exception as error:
        raise await _translated(connection, adapted, statement, args, error) from error
    dispatch.after_cursor_execute(sync_connection, None, statement.sql, args, None, False)
    return rows


async def _connection(session: AsyncSession) -> AsyncConnection:
    """The session's connection, as `session.connection()` gives it: remembered for the rest of
    the transaction that it belongs to, since asking the session again for each statement (a
    greenlet hop and SQLAlchemy's transaction bookkeeping) cost a booking 0.15 ms."""
    transaction = session.sync_session._transaction
    bound = session.info.get(_BOUND)
    if bound is not None and transaction is not None and bound[0] is transaction:
        return cast("AsyncConnection", bound[1])
    connection = await session.connection()
    # The transaction the call began (or found): a commit, a rollback or a savepoint replaces
    # it, and the next statement asks the session again.
    session.info[_BOUND] = (session.sync_session._transaction, connection)
    return connection


async def _driver(connection: AsyncConnection) -> tuple[asyncpg.Connection, Any]:
    cached = connection.info.get(_DRIVER)
    if cached is not None:
        return cast("tuple[asyncpg.Connection, Any]", cached)
    raw = await connection.get_raw_connection()
    adapted = raw.dbapi_connection  # SQLAlchemy's AsyncAdapt_asyncpg_connection
    pair = (raw.driver_connection, adapted)
    # `info` belongs to the pooled DBAPI connection: the pair lives exactly as long as it.
    connection.info[_DRIVER] = pair
    return pair


async def _translated(
    connection: AsyncConnection,
    adapted: Any,
    statement: Statement,
    args: list[Any],
    error: Exception,
) -> Exception:
    """The `sqlalchemy.exc` error SQLAlchemy would have raised for `error`, after invalidating
    the connection when the error means it is gone."""
    dialect = connection.dialect
    wrapped, dbapi_error = _dbapi(dialect, adapted, error)
    if wrapped is None:
        return error
    disconnect = dialect.is_disconnect(wrapped, adapted, None)  # type: ignore[arg-type]
    if disconnect:
        adapted._transaction = None
        await connection.invalidate(wrapped)
    return _wrapped(statement, args, wrapped, dbapi_error, dialect, disconnect=disconnect)


def _wrapped(
    statement: Statement,
    args: list[Any],
    error: Exception,
    dbapi_error: type[Exception],
    dialect: Any,
    *,
    disconnect: bool,
) -> Exception:
    """The `sqlalchemy.exc` error around a DB-API error, as SQLAlchemy raises it (parameters
    hidden: they may hold personal data)."""
    return sa_exc.DBAPIError.instance(
        statement.sql,
        args,
        error,
        dbapi_error,
        hide_parameters=True,
        connection_invalidated=disconnect,
        dialect=dialect,
    )


def _dbapi(
    dialect: Any, adapted: Any, error: Exception
) -> tuple[Exception | None, type[Exception]]:
    """The dialect's DB-API error for a driver error (None for an error of another kind), and
    the DB-API's base error class."""
    dbapi_error = cast("type[Exception]", dialect.loaded_dbapi.Error)
    if isinstance(error, dbapi_error):
        return error, dbapi_error  # from BEGIN, which SQLAlchemy's adapter already translated
    if not isinstance(error, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        return None, dbapi_error
    try:
        adapted._handle_exception(error)  # raises the dialect's DB-API error around it
    except Exception as translated:  # whatever it raised is what SQLAlchemy would wrap
        return translated, dbapi_error
    return error, dbapi_error  # pragma: no cover - it always raises
