"""Typed request dependencies: the unit of work, the authenticated caller, and role requirements.

Routes declare what they need in their signature (`caller: UsersAdmin`), never re-check it inside.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from privategpt.auth import service as auth_service
from privategpt.auth.principal import Principal
from privategpt.context import AppContext, get_context
from privategpt.errors import AppError, Forbidden

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_READ_ONLY_MARK = "x-read-only"
# Declared on a route that reads although its method is not GET (`POST /search`): `openapi_extra=READ_ONLY`.
# Its unit of work then opens a plain transaction, so on SQLite it does not queue behind every writer.
READ_ONLY: dict[str, object] = {_READ_ONLY_MARK: True}


def _writes(request: Request) -> bool:
    if request.method in _READ_ONLY_METHODS:
        return False
    route = request.scope.get("route")
    return not (getattr(route, "openapi_extra", None) or {}).get(_READ_ONLY_MARK, False)


async def _unit_of_work(request: Request) -> AsyncIterator[AsyncSession]:
    context = get_context(request)
    # A GET reads statement by statement, as PostgreSQL's READ COMMITTED does anyway (on SQLite it saves the
    # BEGIN and COMMIT round trips); reads under READ_ONLY, such as retrieval, keep their one snapshot.
    factory = context.database.session_factory(
        write=_writes(request), snapshot=request.method not in _READ_ONLY_METHODS
    )
    async with factory() as session:
        try:
            yield session
        except AppError as exc:
            if exc.keep_changes:
                await session.commit()
            else:
                await session.rollback()
            raise
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


# scope="function": commit before the response is sent, so a failed commit is never reported as success.
DbSession = Annotated[AsyncSession, Depends(_unit_of_work, scope="function")]
Context = Annotated[AppContext, Depends(get_context)]


async def _current_principal(request: Request, session: DbSession) -> Principal:
    user, token_id = await auth_service.authenticate(
        session,
        authorization=request.headers.get("authorization"),
        authentication=request.headers.get("authentication"),
    )
    return Principal(user=user, token_id=token_id)


CurrentPrincipal = Annotated[Principal, Depends(_current_principal)]


class RequireRole:
    """Dependency that admits only callers holding `role`."""

    def __init__(self, role: str) -> None:
        self.role = role

    async def __call__(self, principal: CurrentPrincipal) -> Principal:
        if not principal.has_role(self.role):
            raise Forbidden(f"This action requires the '{self.role}' role.")
        return principal


UsersAdmin = Annotated[Principal, Depends(RequireRole("users"))]
DocumentsEditor = Annotated[Principal, Depends(RequireRole("documents"))]
ScenariosAdmin = Annotated[Principal, Depends(RequireRole("scenarios"))]
SystemOperator = Annotated[Principal, Depends(RequireRole("system"))]
