"""What a caller may see and change: the one definition, used by every source endpoint and by retrieval.

Reading (CONTRACT section 3, "get source"): a source is visible when it is public and the caller has
`usePublic`, when it shares a group with the caller, or when the caller created it. Every statement
that returns sources — get, list, list by group, edit, delete — filters with `visible_sources_clause`,
so a source the caller may not see is indistinguishable from one that does not exist (404).

Writing ("create/edit/delete source"): every group named, old and new, must be one of the caller's, and
a public source needs `publicUpload`.

Retrieval (chat, search): `retrieval_scope` checks the groups and public flag a request asks for and
turns them into the scope the retrieval core puts into its query, so the caller's permissions are
part of the search itself rather than a filter applied to its results.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, and_, exists, false, or_, select, true

from privategpt.auth.principal import Principal
from privategpt.errors import Forbidden
from privategpt.models import GroupMember, Source, SourceGroup
from privategpt.rag import RetrievalScope


def _member_group_ids(user_id: int) -> ColumnElement[bool]:
    """The caller's groups as a subquery, so a membership change applies to the very next statement."""
    return SourceGroup.group_id.in_(select(GroupMember.group_id).where(GroupMember.user_id == user_id))


def visible_sources_clause(principal: Principal) -> ColumnElement[bool]:
    """A WHERE clause on `Source` admitting exactly the sources `principal` may see."""
    user = principal.user
    shares_group = exists().where(SourceGroup.source_id == Source.id, _member_group_ids(user.id))
    clauses: list[ColumnElement[bool]] = [Source.creator_id == user.id, shares_group]
    if user.use_public:
        clauses.append(Source.is_public == true())
    return or_(*clauses)


def retrieval_scope_clause(scope: RetrievalScope) -> ColumnElement[bool]:
    """A WHERE clause on `Source` admitting exactly the searchable sources of a retrieval scope.

    The SQL twin of the retrieval core's scope filter, for reads of whole documents (`document_store`).
    """
    in_scope: list[ColumnElement[bool]] = []
    if scope.include_public:
        in_scope.append(Source.is_public == true())
    if scope.group_ids:
        in_scope.append(
            exists().where(SourceGroup.source_id == Source.id, SourceGroup.group_id.in_(sorted(scope.group_ids)))
        )
    if not in_scope:
        return false()
    return and_(Source.state == "vectorized", or_(*in_scope))


def check_source_groups_writable(principal: Principal, group_ids: Iterable[int], *, is_public: bool) -> None:
    """Raise 403 unless the caller may place a source in (or take it out of) these groups."""
    if is_public:
        if not principal.user.public_upload:
            raise Forbidden("Creating or editing public sources requires the publicUpload permission.")
        return
    if set(group_ids) - principal.group_ids:
        raise Forbidden("You can only use groups you are a member of.")


def retrieval_scope(principal: Principal, groups: Iterable[str], use_public: bool) -> RetrievalScope:
    """Check the groups and public flag of a chat or search request; return the scope retrieval runs in.

    Every requested group must be one of the caller's (403 otherwise; an unknown group is simply not
    one of theirs), and `use_public` needs the caller's `usePublic` flag (403).
    """
    own = {g.name_key: g.id for g in principal.user.groups}
    group_ids: set[int] = set()
    for name in groups:
        group_id = own.get(name.strip().casefold())
        if group_id is None:
            raise Forbidden(f"You are not a member of the group '{name}'.")
        group_ids.add(group_id)
    if use_public and not principal.user.use_public:
        raise Forbidden("You are not allowed to use public documents.")
    return RetrievalScope(group_ids=frozenset(group_ids), include_public=use_public)
