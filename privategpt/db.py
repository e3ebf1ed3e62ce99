"""Engine and unit of work: one transaction per request, committed on success, rolled back on error."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import CompoundSelect, CursorResult, Select, event, make_url
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolResetState
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.util import await_
from sqlalchemy.util.queue import Empty, Full, QueueCommon

from privategpt.config import Settings

T = TypeVar("T")

# Execution option that makes SQLite take the write lock when the transaction begins. Without it two
# transactions that read and then write deadlock, and SQLite fails one at once with "database is locked"
# instead of waiting for busy_timeout.
SQLITE_WRITE_INTENT = "privategpt_write_intent"


# Execution option of the sessions that read statement by statement on SQLite (GET requests): no BEGIN, so
# each statement reads the latest commit on its own, as every statement does under PostgreSQL's default READ
# COMMITTED. It spares the request two hops to aiosqlite's thread (BEGIN, COMMIT) of its three.
SQLITE_STATEMENT_READS = "privategpt_statement_reads"

# Set in a pooled connection's `info` while its transaction holds the process's write turn.
_HOLDS_WRITE_TURN = "privategpt_write_turn"


class WriteTurns:
    """SQLite's writers of one process, queued in the event loop instead of in SQLite's busy handler.

    SQLite admits one write transaction at a time; the others wait in `BEGIN IMMEDIATE`, which sleeps and
    retries (1, 2, 5, ... then 100 ms steps) in the connection's thread. Under a steady stream of writes
    (ingestion) the lock then sat free for most of those sleeps. Here the next writer of this process
    starts as soon as the last one's connection is back in the pool. Writers of other processes (a
    dedicated worker) still meet at SQLite's lock, as before.
    """

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def acquire(self) -> None:
        """Wait for the turn (from SQLAlchemy's greenlet, on the event loop's thread)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        await_(self._lock.acquire())

    def release(self) -> None:
        lock, loop = self._lock, self._loop
        if lock is None or loop is None or loop.is_closed():
            return
        if threading.get_ident() == getattr(loop, "_thread_id", None):
            lock.release()
        else:  # a connection finalised by the garbage collector in another thread
            loop.call_soon_threadsafe(lock.release)


def _configure_sqlite(engine: AsyncEngine, turns: WriteTurns) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself, so it can choose DEFERRED or IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(SQLITE_STATEMENT_READS):
            return
        write = bool(options.get(SQLITE_WRITE_INTENT))
        statement = "BEGIN IMMEDIATE" if write else "BEGIN"
        if write:
            turns.acquire()
            conn.info[_HOLDS_WRITE_TURN] = True
        # Straight to aiosqlite, one hop to its thread: every request begins a transaction, and the same
        # statement through exec_driver_sql took three hops (cursor, execute, close) and SQLAlchemy's whole
        # execution path. sqlite3's errors (a busy timeout) are wrapped as SQLAlchemy's would have been.
        try:
            conn.connection.dbapi_connection.run_async(  # type: ignore[union-attr]
                lambda driver: driver.execute_fetchall(statement)
            )
        except sqlite3.Error as exc:
            raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Back in the pool (after commit or rollback, or invalidated): the next writer's turn.
        if record.info.pop(_HOLDS_WRITE_TURN, False):
            turns.release()

    @event.listens_for(sync_engine, "reset")
    def _on_reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
        # The pool's own reset (off, see create_engine) rolls back every returned connection: one more hop
        # per request, for nothing after the usual commit. Only a connection still in a transaction needs it.
        if state.asyncio_safe and not state.terminate_only and dbapi_connection.driver_connection.in_transaction:
            dbapi_connection.rollback()


class _SQLiteDialect(SQLiteDialect_aiosqlite):
    """aiosqlite, minus the hop to its thread for a COMMIT or ROLLBACK with no transaction open.

    A statement-by-statement read (`SQLITE_STATEMENT_READS`) never begins one, yet SQLAlchemy still ends its
    unit of work with a COMMIT that sqlite3 would ignore after a round trip to aiosqlite's thread.
    """

    supports_statement_cache = True

    def do_commit(self, dbapi_connection: Any) -> None:
        if dbapi_connection.driver_connection.in_transaction:
            dbapi_connection.commit()

    def do_rollback(self, dbapi_connection: Any) -> None:
        if dbapi_connection.driver_connection.in_transaction:
            dbapi_connection.rollback()


class _ArrivalOrderQueue(QueueCommon[ConnectionPoolEntry]):
    """The pool's idle connections, handed to the requests waiting for one strictly in arrival order.

    SQLAlchemy's asyncio pool queue (an `asyncio.Queue`) wakes the longest waiter when a connection comes back,
    but a request arriving before that waiter runs takes the connection first, and the waiter queues again at
    the back. Under a closed loop of 25 clients per process with 16 connections, some requests waited while 100
    and more others were served, and `GET /groups` p99 was 5-8 times its p50 (docs/benchmarks.md). Here a
    returned connection goes straight to the longest waiter, so an idle connection exists only when nobody waits.
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self._idle: deque[ConnectionPoolEntry] = deque()
        self._waiters: deque[asyncio.Future[ConnectionPoolEntry]] = deque()

    def empty(self) -> bool:
        return not self._idle

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._idle)

    def qsize(self) -> int:
        return len(self._idle)

    def put_nowait(self, item: ConnectionPoolEntry) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled or timed-out waiter has left the line
                waiter.set_result(item)
                return
        if self.full():
            raise Full()
        self._idle.append(item)

    def put(self, item: ConnectionPoolEntry, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> ConnectionPoolEntry:
        if not self._idle:
            raise Empty()
        return self._idle.pop() if self.use_lifo else self._idle.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> ConnectionPoolEntry:
        if self._idle or not block:
            return self.get_nowait()
        waiter: asyncio.Future[ConnectionPoolEntry] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await_(asyncio.wait_for(waiter, timeout))
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                # Handed a connection just as the wait ended (timeout, cancelled request): pass it on.
                self.put_nowait(waiter.result())
            if isinstance(exc, TimeoutError):
                raise Empty() from None
            raise


class _ArrivalOrderPool(AsyncAdaptedQueuePool):
    _queue_class = _ArrivalOrderQueue


# SQLAlchemy names a pool's logger after its class, so this one would log under `privategpt`, which is at INFO:
# keep it as quiet as SQLAlchemy's own pool (its connect/dispose notes are for `echo_pool` debugging).
logging.getLogger(f"{__name__}.{_ArrivalOrderPool.__name__}").setLevel(logging.WARNING)


_SQLITE_DIALECT = "sqlite.privategpt_aiosqlite"
registry.register(_SQLITE_DIALECT, __name__, "_SQLiteDialect")


def create_engine(settings: Settings) -> AsyncEngine:
    """Create the async engine for the configured database, tuned for concurrent use."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            make_url(url).set(drivername=_SQLITE_DIALECT.replace(".", "+")),
            poolclass=_ArrivalOrderPool,
            pool_size=settings.db_pool_size,
            # No overflow connections: one was closed whenever enough others sat idle, and the next busy moment
            # opened it again (a thread, the file, four PRAGMAs) inside some request, which then waited while
            # dozens of others were served. Measured in docs/benchmarks.md (issue 3).
            max_overflow=0,
            pool_timeout=60,
            pool_reset_on_return=None,
            # Every statement still runs in aiosqlite's own thread; this only lets the pool's reset handler
            # read `in_transaction` (a flag) from the event loop's thread instead of making a hop to ask.
            connect_args={"check_same_thread": False},
        )
        _configure_sqlite(engine, WriteTurns())
        return engine
    engine = create_async_engine(
        url,
        poolclass=_ArrivalOrderPool,
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=60,
    )
    _configure_postgresql(engine)
    return engine


def _configure_postgresql(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _replace_closed(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        # Instead of SQLAlchemy's pool_pre_ping, which on asyncpg is three round trips per checkout (BEGIN,
        # a ping, ROLLBACK): half of a `GET /groups`'s CPU here, the server's and PostgreSQL's
        # (docs/benchmarks.md, issue 3). A connection that PostgreSQL closed (a restart, an administrator's
        # pg_terminate_backend) is already marked closed by asyncpg, whose event loop saw the socket end; the
        # pool then opens a fresh one. A connection lost without a word from the server fails its request
        # once and is discarded, as with any database error that SQLAlchemy recognises as a disconnect.
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("PostgreSQL closed this connection")


Statement = Select[Any] | CompoundSelect[Any] | UpdateBase


class _Compiled:
    """A statement compiled for one dialect, with the conversions of its column types: of the parameters
    into what the driver takes (datetimes, booleans and JSON on SQLite), and of result rows back."""

    def __init__(self, statement: Statement, dialect: Dialect) -> None:
        self.compiled = statement.compile(dialect=dialect)
        self.sql = str(self.compiled)
        self.names = list(self.compiled.positiontup or ())
        self.binders: list[tuple[int, Callable[[Any], Any]]] = []
        for index, name in enumerate(self.names):
            binder = self.compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if binder is not None:
                self.binders.append((index, binder))
        self.converters: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(getattr(statement, "selected_columns", ())):
            converter = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if converter is not None:
                self.converters.append((index, converter))

    def parameters(self, params: dict[str, Any]) -> list[Any]:
        values = self.compiled.construct_params(params)
        positional = [values[name] for name in self.names]
        for index, binder in self.binders:
            positional[index] = binder(positional[index])
        return positional

    def convert(self, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for index, converter in self.converters:
            values[index] = converter(values[index])
        return values


class _DriverStatement:
    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _Compiled(self.statement, dialect)
        return compiled

    def on_driver(self, dialect: Dialect, **params: Any) -> tuple[str, list[Any]]:
        """The SQL and its positional parameters (converted by the column types), for a caller that runs
        the statement on the driver's connection itself (several statements in one hop to SQLite's thread)."""
        compiled = self._compile(dialect)
        return compiled.sql, compiled.parameters(params)


async def driver_connection(connection: AsyncConnection) -> Any:
    """The driver's own connection under `connection` (aiosqlite or asyncpg), in the caller's transaction."""
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is None:
        raise InvalidRequestError("The connection was invalidated earlier in this transaction.")
    return driver


async def on_sqlite_thread(conn: AsyncConnection, work: Callable[[sqlite3.Connection], T]) -> T:
    """`work(connection)` on the SQLite connection itself, in aiosqlite's thread and the caller's transaction.

    One hop to that thread for any number of statements, where SQLAlchemy's cursor takes three or four
    per statement (each hop wakes the thread and waits for the event loop to be told), and the Python
    around the statements runs there too, not on the event loop.
    """
    driver = await driver_connection(conn)
    # aiosqlite's own queue runs a plain function in its thread (since 0.17; private, hence checked).
    execute, sqlite = getattr(driver, "_execute", None), getattr(driver, "_conn", None)
    if execute is None or not isinstance(sqlite, sqlite3.Connection):
        raise RuntimeError("this aiosqlite version offers no way to run a function in its thread")
    return cast(T, await execute(work, sqlite))


class DriverQuery(_DriverStatement):
    """A Core SELECT run on the driver's own connection (aiosqlite or asyncpg) in the caller's transaction.

    For the statement every request runs (authentication): SQLAlchemy's execution path costs more than the
    query, and on SQLite its cursor takes four hops to aiosqlite's thread (cursor, execute, fetch, close)
    where the driver's `execute_fetchall` takes one. SQLAlchemy still compiles the statement, once per
    dialect, and its column types still convert parameters and results (booleans and datetimes on SQLite).
    """

    def __init__(self, statement: Select[Any] | CompoundSelect[Any]) -> None:
        super().__init__(statement)

    async def all(self, connection: AsyncConnection, **params: Any) -> list[list[Any]]:
        compiled = self._compile(connection.dialect)
        positional = compiled.parameters(params)
        driver = await driver_connection(connection)
        if connection.dialect.name == "sqlite":
            rows = await driver.execute_fetchall(compiled.sql, positional)
        else:
            rows = await driver.fetch(compiled.sql, *positional)
        return [compiled.convert(row) for row in rows]


class DriverWrite(_DriverStatement):
    """A Core INSERT, UPDATE or DELETE without RETURNING, run in the caller's transaction.

    On SQLite it goes straight to aiosqlite, one hop to its thread where SQLAlchemy's cursor takes three
    (cursor, execute, close); SQLite's transaction is the one `BEGIN` opened on that connection. On
    PostgreSQL it goes through SQLAlchemy Core, which begins asyncpg's transaction (lazily, on the first
    statement SQLAlchemy itself runs) and costs no thread hop there.
    """

    async def run(self, connection: AsyncConnection, **params: Any) -> int:
        """The statement once; the number of rows it matched."""
        if connection.dialect.name != "sqlite":
            result = await connection.execute(self.statement, params)
            return int(cast(CursorResult[Any], result).rowcount)
        sql, values = self.on_driver(connection.dialect, **params)
        return await on_sqlite_thread(connection, lambda sqlite: sqlite.execute(sql, values).rowcount)

    async def run_many(self, connection: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        """The statement once per row of parameters (an executemany: one hop on SQLite)."""
        if not rows:
            return
        if connection.dialect.name != "sqlite":
            await connection.execute(self.statement, list(rows))
            return
        compiled = self._compile(connection.dialect)
        # The cursor holds no open statement once executemany returns; it needs no closing hop.
        await (await driver_connection(connection)).executemany(compiled.sql, [compiled.parameters(r) for r in rows])


Write = tuple[DriverWrite, Sequence[dict[str, Any]]]


async def run_writes(connection: AsyncConnection, writes: Sequence[Write]) -> None:
    """Several `DriverWrite`s in order, each once per row of parameters; on SQLite all in one hop.

    For a request's whole write (ingestion's `POST /sources`): every hop to aiosqlite's thread wakes that
    thread and waits for the event loop to be told, which under load costs more than the statements.
    """
    dialect = connection.dialect
    if dialect.name != "sqlite":
        for write, rows in writes:
            await write.run_many(connection, rows)
        return
    batch = []
    for write, rows in writes:
        compiled = write._compile(dialect)
        batch.append((compiled.sql, [compiled.parameters(row) for row in rows]))

    def apply(sqlite: sqlite3.Connection) -> None:
        for sql, rows in batch:
            if len(rows) == 1:
                sqlite.execute(sql, rows[0])
            elif rows:
                sqlite.executemany(sql, rows)

    await on_sqlite_thread(connection, apply)


class Database:
    """The engine and the session factories of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(settings)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._read_engine = self.engine
        self._statement_read_engine = (
            self.engine.execution_options(**{SQLITE_STATEMENT_READS: True}) if self.is_sqlite else self.engine
        )
        self._write_engine = (
            self.engine.execution_options(**{SQLITE_WRITE_INTENT: True}) if self.is_sqlite else self.engine
        )
        self._read_sessions = async_sessionmaker(self._read_engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(self._write_engine, expire_on_commit=False)

    def engine_for(self, *, write: bool, snapshot: bool = True) -> AsyncEngine:
        """Connections that write, or read in one snapshot, or (`snapshot=False`) read each statement's latest
        commit: enough for a request that reads one thing after authenticating, as on PostgreSQL."""
        if write:
            return self._write_engine
        return self._read_engine if snapshot else self._statement_read_engine

    @asynccontextmanager
    async def session(self, *, write: bool = True) -> AsyncIterator[AsyncSession]:
        """A unit of work: commit when the block succeeds, roll back when it raises."""
        async with (self._write_sessions if write else self._read_sessions)() as session:
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            else:
                await session.commit()

    async def dispose(self) -> None:
        await self.engine.dispose()
