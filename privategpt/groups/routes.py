"""Group endpoints: list (any user), create and delete (role `users`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, field_validator

from privategpt.auth.dependencies import CurrentPrincipal, UsersAdmin
from privategpt.context import client_address
from privategpt.errors import envelope
from privategpt.groups import service
from privategpt.schemas import Empty, Envelope, RequestModel
from privategpt.unit_of_work import DbConnection, DbSession, UnitOfWorkRoute

router = APIRouter(prefix="/groups", tags=["groups"], route_class=UnitOfWorkRoute)


class GroupName(RequestModel):
    groupName: str = Field(max_length=255)

    @field_validator("groupName")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("The groupName field is required.")
        return value.strip()


class GroupsOut(BaseModel):
    personalGroups: list[str]
    assignableGroups: list[str]
    usePublic: bool


class GroupOut(BaseModel):
    groupName: str


@router.get("", response_model=Envelope[GroupsOut], summary="The caller's groups and the assignable ones")
async def list_groups(connection: DbConnection, caller: CurrentPrincipal) -> dict[str, object]:
    listing = await service.list_for(connection, caller)
    return envelope(
        {
            "personalGroups": listing.personal,
            "assignableGroups": listing.assignable,
            "usePublic": listing.use_public,
        }
    )


@router.post("", response_model=Envelope[GroupOut], summary="Create a group; the creator becomes a member")
async def create_group(body: GroupName, request: Request, session: DbSession, caller: UsersAdmin) -> dict[str, object]:
    group = await service.create_group(session, body.groupName, caller=caller, client=client_address(request))
    return envelope({"groupName": group.name})


@router.delete("", response_model=Envelope[Empty], summary="Delete a group that no source depends on alone")
async def delete_group(body: GroupName, request: Request, session: DbSession, caller: UsersAdmin) -> dict[str, object]:
    await service.delete_group(session, body.groupName, caller=caller, client=client_address(request))
    return envelope({})
