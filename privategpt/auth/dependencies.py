"""Typed request dependencies: the authenticated caller and role requirements.

Routes declare what they need in their signature (`caller: UsersAdmin`), never re-check it inside.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from privategpt.auth import service as auth_service
from privategpt.auth.principal import Principal
from privategpt.context import AppContext, get_context
from privategpt.errors import Forbidden
from privategpt.unit_of_work import request_connection

Context = Annotated[AppContext, Depends(get_context)]


async def _current_principal(request: Request) -> Principal:
    user, token_id = await auth_service.authenticate(
        await request_connection(request),
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
