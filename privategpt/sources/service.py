"""Sources: create, read, edit, delete and list — every read through `access.visible_sources_clause`.

Services only flush; the request's unit of work commits. Ingestion jobs are written in that same
transaction and the worker is woken after it commits (`privategpt.worker.queue`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, bindparam, exists, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from privategpt import access
from privategpt.audit import service as audit
from privategpt.auth.principal import Principal
from privategpt.config import Settings
from privategpt.db import DriverWrite, run_writes
from privategpt.errors import Forbidden, NotFound, ValidationFailed
from privategpt.groups.service import groups_by_names, name_key
from privategpt.models import Group, Source, SourceGroup, new_uuid, utcnow
from privategpt.rag import delete_source_chunks
from privategpt.sources.schemas import Creator, EmbeddingState, SourceCreate, SourceOut, SourceUpdate
from privategpt.worker import queue

Wake = Callable[[], None]

NOT_FOUND = "Source not found."


def embedding_state(source: Source, dense: bool) -> EmbeddingState:
    """The `embedding` of a source: `disabled` when there is nothing to embed or nothing to embed with."""
    if not dense or source.state == "error":
        return "disabled"
    return "done" if source.state == "vectorized" and source.embedding_state == "done" else "pending"


def to_out(source: Source, *, dense: bool) -> SourceOut:
    groups = sorted((link.group.name for link in source.group_links), key=str.lower)
    creator = Creator(email=source.creator.email, name=source.creator.name) if source.creator else None
    return SourceOut(
        sourceId=source.id,
        name=source.name,
        title=source.name,
        groups=groups,
        isPublic=source.is_public,
        state=source.state,
        error=source.error if source.state == "error" else None,
        embedding=embedding_state(source, dense),
        creator=creator,
        createdAt=source.created_at,
        updatedAt=source.updated_at,
    )


def _check_content(settings: Settings, content: str) -> None:
    if not content.strip():
        raise ValidationFailed("content", "The content field must not be empty.")
    size = len(content.encode("utf-8"))
    if size > settings.max_source_bytes:
        raise ValidationFailed(
            "content", f"The content must not be larger than {settings.max_source_bytes} bytes (got {size})."
        )


def _check_writable(caller: Principal, group_ids: Sequence[int]) -> None:
    access.check_source_groups_writable(caller, group_ids, is_public=not group_ids)


@dataclass(frozen=True)
class CreatedSource:
    id: str
    state: str


_SOURCE_COLUMNS = ("id", "name", "content", "is_public", "creator_id", "state", "created_at", "updated_at")
_INSERT_SOURCE = DriverWrite(insert(Source).values({c: bindparam(c) for c in _SOURCE_COLUMNS}))
_INSERT_LINK = DriverWrite(insert(SourceGroup).values(source_id=bindparam("source_id"), group_id=bindparam("group_id")))


def _own_group_ids(caller: Principal, names: Sequence[str]) -> list[int] | None:
    """The ids of the named groups if the caller is a member of each, else None (resolve them in the database)."""
    own = {group.name_key: group.id for group in caller.user.groups}
    ids = [own.get(name_key(name)) for name in names]
    return None if None in ids else list(dict.fromkeys(i for i in ids if i is not None))


async def create_source(
    session: AsyncSession, settings: Settings, body: SourceCreate, *, caller: Principal, client: str, wake: Wake | None
) -> CreatedSource:
    """Store a source in state `processing` and queue its ingestion.

    The hot path of ingestion, so written with Core statements on the unit of work's connection: the
    source, its group links, its job and the audit event, all in one hop to SQLite's thread.
    """
    _check_content(settings, body.content)
    connection = await session.connection()
    # The caller's own groups came with their token, in this transaction. SQLite serialises writers, so
    # none can be deleted meanwhile; PostgreSQL locks them FOR SHARE in groups_by_names (see there).
    group_ids = _own_group_ids(caller, body.groups) if connection.dialect.name == "sqlite" else None
    if group_ids is None:
        group_ids = [g.id for g in await groups_by_names(session, body.groups)]
    _check_writable(caller, group_ids)
    source_id, now = new_uuid(), utcnow()
    source = {
        "id": source_id,
        "name": body.name,
        "content": body.content,
        "is_public": not group_ids,
        "creator_id": caller.user.id,
        "state": "processing",
        "created_at": now,
        "updated_at": now,
    }
    audit_event = audit.event_write(
        actor=caller.user,
        action="source.create",
        target_type="source",
        target=source_id,
        fields=["name", "groups", "content"],
        client=client,
    )
    await run_writes(
        connection,
        [
            (_INSERT_SOURCE, [source]),
            (_INSERT_LINK, [{"source_id": source_id, "group_id": gid} for gid in group_ids]),
            (queue.INSERT_JOB, queue.job_rows(queue.INGEST, [source_id])),
            audit_event,
        ],
    )
    queue.wake_after_commit(session, wake)
    return CreatedSource(id=source_id, state="processing")


async def get_visible(session: AsyncSession, caller: Principal, source_id: str, *, lock: bool = False) -> Source:
    """The source if the caller may see it; 404 alike for a missing and an invisible one."""
    statement = select(Source).where(Source.id == source_id, access.visible_sources_clause(caller))
    if lock:
        # Edits and the worker's final write lock the source row first, always in that order.
        statement = statement.with_for_update(of=Source)
    source = await session.scalar(statement)
    if source is None:
        raise NotFound(NOT_FOUND)
    return source


async def _get_writable(session: AsyncSession, caller: Principal, source_id: str) -> Source:
    source = await get_visible(session, caller, source_id, lock=True)
    _check_writable(caller, [link.group_id for link in source.group_links])
    return source


async def update_source(
    session: AsyncSession,
    settings: Settings,
    source_id: str,
    body: SourceUpdate,
    *,
    caller: Principal,
    client: str,
    wake: Wake | None,
) -> Source:
    """Change only the keys sent; new content (or a new name, which is indexed too) re-ingests."""
    source = await _get_writable(session, caller, source_id)
    sent = body.model_fields_set
    changed: list[str] = []
    if "content" in sent and body.content is not None:
        _check_content(settings, body.content)
    if "groups" in sent and body.groups is not None:
        groups = await groups_by_names(session, body.groups)
        new_ids = [g.id for g in groups]
        _check_writable(caller, new_ids)
        kept = {link.group_id: link for link in source.group_links}
        if set(new_ids) != set(kept):
            source.group_links = [kept.get(gid) or SourceGroup(group_id=gid) for gid in new_ids]
            source.is_public = not new_ids
            changed.append("groups")
    reingest = False
    if "name" in sent and body.name is not None and body.name != source.name:
        source.name = body.name
        changed.append("name")
        reingest = True
    if "content" in sent and body.content is not None and body.content != source.content:
        source.content = body.content
        changed.append("content")
        reingest = True
    if not changed:
        return source
    source.updated_at = utcnow()
    if reingest:
        source.state = "processing"
        source.error = None
    await session.flush()
    if reingest:
        # Out of the index at once: a source is searchable only in state `vectorized`, with its current text.
        await delete_source_chunks(await session.connection(), source.id)
        await queue.enqueue(session, queue.INGEST, source.id, wake=wake)
    await audit.record(
        session,
        actor=caller.user,
        action="source.update",
        target_type="source",
        target=source.id,
        fields=changed,
        client=client,
    )
    # The new group links carry no loaded `group` yet; reload them for the response.
    await session.refresh(source, ["group_links"])
    return source


async def delete_source(session: AsyncSession, source_id: str, *, caller: Principal, client: str) -> None:
    """Delete a source; from the commit on it is never retrieved again."""
    source = await _get_writable(session, caller, source_id)
    # The index rows and queued jobs go with the row (ON DELETE CASCADE), in this same transaction.
    await session.delete(source)
    await session.flush()
    await audit.record(
        session,
        actor=caller.user,
        action="source.delete",
        target_type="source",
        target=source_id,
        fields=["sourceId"],
        client=client,
    )


async def source_ids_of_group(session: AsyncSession, caller: Principal, group_name: str) -> list[str]:
    """`POST /sources/groups`: ids in a group the caller belongs to, or the public ones for `""`."""
    if group_name.strip() == "":
        user = caller.user
        if not (user.use_public or user.public_upload):
            raise Forbidden("Listing public sources requires the usePublic or publicUpload permission.")
        condition: ColumnElement[bool] = Source.is_public.is_(True)
    else:
        group = await session.scalar(select(Group).where(Group.name_key == name_key(group_name)))
        if group is None:
            raise NotFound("The group does not exist.")
        if group.id not in caller.group_ids:
            raise Forbidden("You are not a member of this group.")
        condition = exists().where(SourceGroup.source_id == Source.id, SourceGroup.group_id == group.id)
    rows = await session.scalars(select(Source.id).where(condition).order_by(Source.created_at, Source.id))
    return list(rows)


@dataclass(frozen=True)
class SourcePage:
    sources: list[Source]
    total: int


async def list_visible(
    session: AsyncSession,
    caller: Principal,
    *,
    group: str | None,
    state: str | None,
    page: int,
    per_page: int,
) -> SourcePage:
    """The sources the caller may see, oldest first; `group=""` means the public ones."""
    conditions = [access.visible_sources_clause(caller)]
    if group is not None:
        if group.strip() == "":
            conditions.append(Source.is_public.is_(True))
        else:
            conditions.append(
                exists()
                .where(SourceGroup.source_id == Source.id)
                .where(SourceGroup.group_id == Group.id, Group.name_key == name_key(group))
            )
    if state is not None:
        conditions.append(Source.state == state)
    total = await session.scalar(select(func.count()).select_from(Source).where(*conditions)) or 0
    rows = await session.scalars(
        select(Source)
        .where(*conditions)
        .order_by(Source.created_at, Source.id)
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return SourcePage(sources=list(rows), total=total)
