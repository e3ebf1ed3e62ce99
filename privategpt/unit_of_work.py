"""One unit of work per API request: committed before the response is sent, rolled back on any error.

Routes take it as a typed dependency, `session: DbSession` (an ORM session) or `connection: DbConnection`
(Core statements only); the routers of API v1 are built with `UnitOfWorkRoute`, which ends it around the
whole handler.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from privategpt.context import get_context
from privategpt.errors import AppError

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_READ_ONLY_MARK = "x-read-only"
# Declared on a route that reads although its method is not GET (`POST /search`): `openapi_extra=READ_ONLY`.
# Its unit of work then opens a plain transaction, so on SQLite it does not queue behind every writer.
READ_ONLY: dict[str, object] = {_READ_ONLY_MARK: True}

_SCOPE_KEY = "privategpt.unit_of_work"


class _UnitOfWork:
    """The request's connection and ORM session, opened when a dependency first asks for them.

    Authentication needs only the connection; the session, when a route asks for one, runs on that same
    connection and transaction. A request that only authenticates (`GET /groups` of a plain user) then costs
    a pooled connection and one statement, not an ORM session's begin, commit and close besides.
    """

    __slots__ = ("_connection", "_engine", "_session", "_transactional")

    def __init__(self, engine: AsyncEngine, *, transactional: bool) -> None:
        self._engine = engine
        # A GET reads statement by statement and begins nothing; every other unit begins its transaction
        # before its first statement (on SQLite a writer's BEGIN IMMEDIATE), authentication included.
        self._transactional = transactional
        self._connection: AsyncConnection | None = None
        self._session: AsyncSession | None = None

    async def connection(self) -> AsyncConnection:
        if self._connection is None:
            self._connection = await self._engine.connect()
            if self._transactional:
                await self._connection.begin()
        return self._connection

    async def session(self) -> AsyncSession:
        if self._session is None:
            # control_fully: the session's commit and rollback end the connection's transaction itself.
            self._session = AsyncSession(
                bind=await self.connection(), expire_on_commit=False, join_transaction_mode="control_fully"
            )
        return self._session

    async def end(self, *, commit: bool) -> None:
        session, connection = self._session, self._connection
        if connection is None:
            return
        try:
            # A session that never began holds nothing (adding an object begins it); a GET's connection
            # that never began has nothing to end.
            if session is not None and session.in_transaction():
                try:
                    await (session.commit() if commit else session.rollback())
                finally:
                    await session.close()
            elif connection.in_transaction():
                await (connection.commit() if commit else connection.rollback())
        finally:
            await connection.close()


class UnitOfWorkRoute(APIRoute):
    """An API route whose handler (dependencies, endpoint and response serialisation) runs inside the
    request's unit of work.

    A route class rather than a yield dependency: FastAPI runs a generator dependency through an exit stack
    and a shielded cancel scope, which cost about as much per request as the session itself.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        read_only_mark = bool((self.openapi_extra or {}).get(_READ_ONLY_MARK, False))

        async def handle_in_unit_of_work(request: Request) -> Response:
            reads = request.method in _READ_ONLY_METHODS
            # A GET reads statement by statement, as PostgreSQL's READ COMMITTED does anyway (on SQLite it
            # saves the BEGIN and COMMIT round trips); reads under READ_ONLY, such as retrieval, keep their
            # one snapshot.
            engine = get_context(request).database.engine_for(write=not (reads or read_only_mark), snapshot=not reads)
            unit = request.scope[_SCOPE_KEY] = _UnitOfWork(engine, transactional=not reads)
            try:
                response = await handler(request)
            except AppError as exc:
                await unit.end(commit=exc.keep_changes)
                raise
            except BaseException:
                await unit.end(commit=False)
                raise
            # Before the response is sent, so that a failed commit is never reported as success.
            await unit.end(commit=True)
            return response

        return handle_in_unit_of_work


def _unit_of(request: Request) -> _UnitOfWork:
    unit: _UnitOfWork | None = request.scope.get(_SCOPE_KEY)
    if unit is None:
        raise RuntimeError(f"{request.url.path} needs the unit of work but its router lacks UnitOfWorkRoute")
    return unit


async def request_connection(request: Request) -> AsyncConnection:
    """The unit of work's connection, for Core statements in its transaction (authentication)."""
    return await _unit_of(request).connection()


async def _request_session(request: Request) -> AsyncSession:
    return await _unit_of(request).session()


DbSession = Annotated[AsyncSession, Depends(_request_session)]
# For a route whose statements are all Core (`db.DriverQuery`): it then costs no ORM session at all.
DbConnection = Annotated[AsyncConnection, Depends(request_connection)]
