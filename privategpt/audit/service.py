"""The audit log: who did what, when, to which fields — never a secret value."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from privategpt.db import DriverWrite, Write
from privategpt.models import AuditEvent, utcnow

SECRET_FIELDS = frozenset({"password", "ftpPassword", "token"})


class Actor(Protocol):
    """Who acted: a stored user, or the authenticated caller of a request."""

    @property
    def id(self) -> int: ...

    @property
    def email(self) -> str: ...


async def record(
    session: AsyncSession,
    *,
    actor: Actor | None,
    action: str,
    target_type: str | None = None,
    target: str | None = None,
    fields: Iterable[str] = (),
    client: str | None = None,
    succeeded: bool = True,
    actor_email: str | None = None,
) -> None:
    """Add an audit event to the current unit of work."""
    session.add(AuditEvent(**_event(actor, actor_email, action, target_type, target, fields, client, succeeded)))
    await session.flush()


def _event(
    actor: Actor | None,
    actor_email: str | None,
    action: str,
    target_type: str | None,
    target: str | None,
    fields: Iterable[str],
    client: str | None,
    succeeded: bool,
) -> dict[str, object]:
    return {
        "actor_id": actor.id if actor else None,
        "actor_email": actor.email if actor else actor_email,
        "action": action,
        "target_type": target_type,
        "target": target,
        "fields": sorted(set(fields)),
        "client": client,
        "succeeded": succeeded,
    }


_EVENT_COLUMNS = ("at", "actor_id", "actor_email", "action", "target_type", "target", "fields", "client", "succeeded")
_INSERT_EVENT = DriverWrite(insert(AuditEvent).values({c: bindparam(c) for c in _EVENT_COLUMNS}))


def event_write(
    *,
    actor: Actor,
    action: str,
    target_type: str,
    target: str,
    fields: Iterable[str],
    client: str | None,
) -> Write:
    """`record` as a Core insert for `db.run_writes`, on a hot path that writes without the ORM."""
    event = _event(actor, None, action, target_type, target, fields, client, True)
    return _INSERT_EVENT, [{"at": utcnow(), **event}]


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    total: int


async def list_events(
    session: AsyncSession, *, page: int, per_page: int, actor: str | None, action: str | None
) -> AuditPage:
    """Newest first; `actor` matches the actor's email, `action` an exact action or a `prefix.` family."""
    conditions = []
    if actor:
        conditions.append(AuditEvent.actor_email == actor.strip().lower())
    if action:
        if action.endswith("."):
            conditions.append(AuditEvent.action.startswith(action, autoescape=True))
        else:
            conditions.append(AuditEvent.action == action)
    total = await session.scalar(select(func.count()).select_from(AuditEvent).where(*conditions)) or 0
    rows = await session.scalars(
        select(AuditEvent)
        .where(*conditions)
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return AuditPage(events=list(rows), total=total)
