"""User administration endpoints (role `users`)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from privategpt.auth.dependencies import Context, UsersAdmin
from privategpt.context import client_address
from privategpt.errors import envelope
from privategpt.schemas import Envelope
from privategpt.unit_of_work import DbSession, UnitOfWorkRoute
from privategpt.users import service
from privategpt.users.schemas import UserCreate, UserOut, UserRef, UserUpdate

router = APIRouter(prefix="/users", tags=["users"], route_class=UnitOfWorkRoute)


@router.post("", response_model=Envelope[UserOut], summary="Create a user")
async def create_user(
    body: UserCreate, request: Request, session: DbSession, ctx: Context, caller: UsersAdmin
) -> dict[str, object]:
    user = await service.create_user(
        session, ctx.settings, ctx.passwords, body, caller=caller, client=client_address(request)
    )
    return envelope(service.to_out(user))


@router.patch("", response_model=Envelope[UserOut], summary="Edit a user; only the keys sent change")
async def update_user(
    body: UserUpdate, request: Request, session: DbSession, ctx: Context, caller: UsersAdmin
) -> dict[str, object]:
    user = await service.update_user(
        session, ctx.settings, ctx.passwords, body, caller=caller, client=client_address(request)
    )
    return envelope(service.to_out(user))


@router.delete("", response_model=Envelope[UserOut], summary="Deactivate a user (soft delete)")
async def delete_user(body: UserRef, request: Request, session: DbSession, caller: UsersAdmin) -> dict[str, object]:
    user = await service.deactivate_user(session, body.email, caller=caller, client=client_address(request))
    return envelope(service.to_out(user))


@router.post("/reactivate", response_model=Envelope[UserOut], summary="Reactivate a deactivated user")
async def reactivate_user(body: UserRef, request: Request, session: DbSession, caller: UsersAdmin) -> dict[str, object]:
    user = await service.reactivate_user(session, body.email, caller=caller, client=client_address(request))
    return envelope(service.to_out(user))
