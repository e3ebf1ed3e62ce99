"""GET /audit (extension): the audit log, for role `system`."""

from __future__ import annotations

import math
from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel

from privategpt.audit import service
from privategpt.auth.dependencies import SystemOperator
from privategpt.errors import envelope
from privategpt.schemas import Envelope
from privategpt.unit_of_work import DbSession, UnitOfWorkRoute

router = APIRouter(prefix="/audit", tags=["audit"], route_class=UnitOfWorkRoute)


class AuditEventOut(BaseModel):
    id: int
    at: datetime
    actor: str | None
    action: str
    targetType: str | None
    target: str | None
    fields: list[str]
    client: str | None
    succeeded: bool


class AuditPageOut(BaseModel):
    events: list[AuditEventOut]
    page: int
    perPage: int
    total: int
    lastPage: int


@router.get("", response_model=Envelope[AuditPageOut], summary="Read the audit log, newest first")
async def list_audit(
    session: DbSession,
    caller: SystemOperator,
    page: int = Query(1, ge=1, le=1_000_000),
    perPage: int = Query(50, ge=1, le=500),
    actor: str | None = Query(None, max_length=320, description="Actor email"),
    action: str | None = Query(None, max_length=64, description="Exact action, or a family like 'user.'"),
) -> dict[str, object]:
    result = await service.list_events(session, page=page, per_page=perPage, actor=actor, action=action)
    events = [
        AuditEventOut(
            id=e.id,
            at=e.at,
            actor=e.actor_email,
            action=e.action,
            targetType=e.target_type,
            target=e.target,
            fields=e.fields,
            client=e.client,
            succeeded=e.succeeded,
        )
        for e in result.events
    ]
    return envelope(
        {
            "events": events,
            "page": page,
            "perPage": perPage,
            "total": result.total,
            "lastPage": max(1, math.ceil(result.total / perPage)),
        }
    )
