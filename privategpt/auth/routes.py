"""POST /login, DELETE /logout, GET /me."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from privategpt.auth import service
from privategpt.auth.dependencies import Context, CurrentPrincipal
from privategpt.context import client_address
from privategpt.errors import Unauthenticated, envelope
from privategpt.models import User
from privategpt.schemas import Empty, Envelope, RequestModel
from privategpt.unit_of_work import DbSession, UnitOfWorkRoute
from privategpt.users.schemas import UserOut
from privategpt.users.service import to_out

router = APIRouter(tags=["auth"], route_class=UnitOfWorkRoute)


class LoginRequest(RequestModel):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class TokenOut(BaseModel):
    token: str


@router.post("/login", response_model=Envelope[TokenOut], summary="Log in and receive an API token")
async def login(body: LoginRequest, request: Request, session: DbSession, ctx: Context) -> dict[str, object]:
    token = await service.login(
        session,
        ctx.settings,
        ctx.passwords,
        email=body.email,
        password=body.password,
        client=client_address(request),
    )
    return envelope({"token": token})


@router.delete("/logout", response_model=Envelope[Empty], summary="Revoke the token used for this call")
async def logout(request: Request, session: DbSession, caller: CurrentPrincipal) -> dict[str, object]:
    await service.logout(session, user=caller.user, token_id=caller.token_id, client=client_address(request))
    return envelope({})


@router.get("/me", response_model=Envelope[UserOut], summary="The caller's own profile, groups and roles")
async def me(session: DbSession, caller: CurrentPrincipal) -> dict[str, object]:
    # The principal holds only what authorisation needs; the profile is read in the same transaction.
    user = await session.get(User, caller.user.id)
    if user is None:
        raise Unauthenticated()
    return envelope(to_out(user))
