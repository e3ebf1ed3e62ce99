"""Groups: listing for a caller, creation, and deletion that never orphans a source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from privategpt.audit import service as audit
from privategpt.auth.principal import Principal
from privategpt.db import DriverQuery
from privategpt.errors import Conflict, NotFound, ValidationFailed
from privategpt.models import Group, GroupMember, Source, SourceGroup

# Roles that see every group as assignable (they hand groups to users or to sources).
_ASSIGNING_ROLES = frozenset({"users", "documents"})


def name_key(name: str) -> str:
    return name.strip().casefold()


async def groups_by_names(session: AsyncSession, names: Sequence[str], field: str = "groups") -> list[Group]:
    """Resolve group names (case-insensitively) or fail validation naming the unknown ones."""
    # Key -> the name as the client spelled it, so that the error names what they actually sent.
    sent = {name_key(n): n.strip() for n in reversed(names)}
    if not sent:
        return []
    # FOR SHARE: callers link these groups to a user or a source next, and a concurrent delete_group
    # (FOR UPDATE) must either wait for that link, and see it, or finish first so that the group is
    # reported missing here. Without it a source could be linked to a group being deleted and be left
    # with no group at all. SQLite ignores the clause; its write transactions are serialised anyway.
    found = list(await session.scalars(select(Group).where(Group.name_key.in_(sent)).with_for_update(read=True)))
    missing = [sent[key] for key in sorted(set(sent) - {g.name_key for g in found})]
    if missing:
        raise ValidationFailed(field, f"The selected group does not exist: {', '.join(missing)}.")
    return found


@dataclass(frozen=True)
class GroupListing:
    personal: list[str]
    assignable: list[str]
    use_public: bool


_ALL_GROUP_NAMES = DriverQuery(select(Group.name).order_by(func.lower(Group.name)))


async def list_for(connection: AsyncConnection, principal: Principal) -> GroupListing:
    """The caller's groups, and those they may assign; the listing every client polls, so Core on the
    request's connection (see `db.DriverQuery`), no ORM session."""
    personal = principal.group_names
    if principal.roles & _ASSIGNING_ROLES:
        assignable = [row[0] for row in await _ALL_GROUP_NAMES.all(connection)]
    else:
        assignable = personal
    return GroupListing(personal=personal, assignable=assignable, use_public=principal.user.use_public)


async def create_group(session: AsyncSession, name: str, *, caller: Principal, client: str | None) -> Group:
    """Create a group; the creator becomes its first member."""
    key = name_key(name)
    if await session.scalar(select(Group.id).where(Group.name_key == key)) is not None:
        raise Conflict("The group already exists.", errors={"groupName": ["The group already exists."]})
    group = Group(name=name.strip(), name_key=key, created_by_id=caller.user.id)
    session.add(group)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict("The group already exists.") from None
    session.add(GroupMember(user_id=caller.user.id, group_id=group.id))
    await session.flush()
    await audit.record(
        session,
        actor=caller.user,
        action="group.create",
        target_type="group",
        target=group.name,
        fields=["groupName"],
        client=client,
    )
    return group


async def delete_group(session: AsyncSession, name: str, *, caller: Principal, client: str | None) -> None:
    """Delete a group unless a source belongs to it alone (it would silently become orphaned)."""
    # Locked first, so that the sole-holder check below sees every link made before it (see groups_by_names).
    group = await session.scalar(select(Group).where(Group.name_key == name_key(name)).with_for_update())
    if group is None:
        raise NotFound("The group does not exist.")
    other = aliased(SourceGroup)
    sole_holder = await session.scalar(
        select(func.count())
        .select_from(SourceGroup)
        .join(Source, Source.id == SourceGroup.source_id)
        .where(
            SourceGroup.group_id == group.id,
            ~exists().where(and_(other.source_id == SourceGroup.source_id, other.group_id != group.id)),
        )
    )
    if sole_holder:
        raise Conflict(f"The group is the only group of {sole_holder} source(s); move or delete them first.")
    await session.execute(delete(GroupMember).where(GroupMember.group_id == group.id))
    await session.execute(delete(SourceGroup).where(SourceGroup.group_id == group.id))
    await session.delete(group)
    await session.flush()
    await audit.record(
        session,
        actor=caller.user,
        action="group.delete",
        target_type="group",
        target=group.name,
        fields=["groupName"],
        client=client,
    )
