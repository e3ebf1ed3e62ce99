"""Engine and unit of work: one transaction per request, committed on success, rolled back on error."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import CompoundSelect, Select, event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

from privategpt.config import Settings

# Execution option that makes SQLite take the write lock when the transaction begins. Without it two
# transactions that read and then write deadlock, and SQLite fails one at once with "database is locked"
# instead of waiting for busy_timeout.
SQLITE_WRITE_INTENT = "privategpt_write_intent"


def _configure_sqlite(engine: AsyncEngine) -> None:
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
        statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get(SQLITE_WRITE_INTENT) else "BEGIN"
        # Straight to aiosqlite, one hop to its thread: every request begins a transaction, and the same
        # statement through exec_driver_sql took three hops (cursor, execute, close) and SQLAlchemy's whole
        # execution path. sqlite3's errors (a busy timeout) are wrapped as SQLAlchemy's would have been.
        try:
            conn.connection.dbapi_connection.run_async(  # type: ignore[union-attr]
                lambda driver: driver.execute_fetchall(statement)
            )
        except sqlite3.Error as exc:
            raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc

    @event.listens_for(sync_engine, "reset")
    def _on_reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
        # The pool's own reset (off, see create_engine) rolls back every returned connection: one more hop
        # per request, for nothing after the usual commit. Only a connection still in a transaction needs it.
        if state.asyncio_safe and not state.terminate_only and dbapi_connection.driver_connection.in_transaction:
            dbapi_connection.rollback()


def create_engine(settings: Settings) -> AsyncEngine:
    """Create the async engine for the configured database, tuned for concurrent use."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            pool_size=8,
            max_overflow=8,
            pool_timeout=60,
            pool_reset_on_return=None,
            # Every statement still runs in aiosqlite's own thread; this only lets the pool's reset handler
            # read `in_transaction` (a flag) from the event loop's thread instead of making a hop to ask.
            connect_args={"check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_timeout=60,
    )


class _Compiled:
    """A statement compiled for one dialect, with the result conversions of its column types."""

    def __init__(self, statement: Select[Any] | CompoundSelect[Any], dialect: Dialect) -> None:
        self.compiled = statement.compile(dialect=dialect)
        self.sql = str(self.compiled)
        self.names = list(self.compiled.positiontup or ())
        self.converters: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(statement.selected_columns):
            converter = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if converter is not None:
                self.converters.append((index, converter))

    def convert(self, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for index, converter in self.converters:
            values[index] = converter(values[index])
        return values


class DriverQuery:
    """A Core SELECT run on the driver's own connection (aiosqlite or asyncpg) in the caller's transaction.

    For the statement every request runs (authentication): SQLAlchemy's execution path costs more than the
    query, and on SQLite its cursor takes four hops to aiosqlite's thread (cursor, execute, fetch, close)
    where the driver's `execute_fetchall` takes one. SQLAlchemy still compiles the statement, once per
    dialect, and its column types still convert results (booleans and datetimes on SQLite). Parameters go
    to the driver as given, so they must be values both drivers take natively (integers, strings).
    """

    def __init__(self, statement: Select[Any] | CompoundSelect[Any]) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    async def all(self, connection: AsyncConnection, **params: int | str) -> list[list[Any]]:
        dialect = connection.dialect
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _Compiled(self.statement, dialect)
        values = compiled.compiled.construct_params(params)
        positional = [values[name] for name in compiled.names]
        driver = (await connection.get_raw_connection()).driver_connection
        if driver is None:
            raise InvalidRequestError("The connection was invalidated earlier in this transaction.")
        if dialect.name == "sqlite":
            rows = await driver.execute_fetchall(compiled.sql, positional)
        else:
            rows = await driver.fetch(compiled.sql, *positional)
        return [compiled.convert(row) for row in rows]


class Database:
    """The engine and the session factories of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(settings)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._read_sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(
            self.engine.execution_options(**{SQLITE_WRITE_INTENT: True}) if self.is_sqlite else self.engine,
            expire_on_commit=False,
        )

    def session_factory(self, *, write: bool) -> async_sessionmaker[AsyncSession]:
        return self._write_sessions if write else self._read_sessions

    @asynccontextmanager
    async def session(self, *, write: bool = True) -> AsyncIterator[AsyncSession]:
        """A unit of work: commit when the block succeeds, roll back when it raises."""
        async with self.session_factory(write=write)() as session:
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            else:
                await session.commit()

    async def dispose(self) -> None:
        await self.engine.dispose()
