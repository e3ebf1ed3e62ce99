"""Source endpoints (CONTRACT section 5) and the `POST /search` extension.

Role requirements are in the signatures (`DocumentsEditor`); which sources a caller may see or change
is decided by `privategpt.access`, inside the service's queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from privategpt import access
from privategpt.auth.dependencies import Context, CurrentPrincipal, DocumentsEditor
from privategpt.context import client_address, get_context
from privategpt.errors import envelope
from privategpt.rag.hybrid import retrieve
from privategpt.schemas import Envelope
from privategpt.sources import service
from privategpt.sources.schemas import (
    GroupNameBody,
    SearchHit,
    SearchRequest,
    SearchResults,
    SourceCreate,
    SourceCreated,
    SourceIds,
    SourceOut,
    SourcePage,
    SourceState,
    SourceUpdate,
)
from privategpt.unit_of_work import READ_ONLY, DbSession, UnitOfWorkRoute

router = APIRouter(tags=["sources"], route_class=UnitOfWorkRoute)


async def _worker_wake(request: Request) -> Callable[[], None] | None:
    """The embedded worker's wake-up, if this process runs one (dedicated workers poll instead).

    A coroutine, as every dependency on the ingestion path: FastAPI runs a plain function in its thread
    pool, a thread hop per request."""
    worker = getattr(request.app.state, "worker", None)
    return worker.wake if worker is not None else None


Wake = Annotated[Callable[[], None] | None, Depends(_worker_wake)]


@router.post("/sources", response_model=Envelope[SourceCreated], summary="Create a source; ingestion runs after")
async def create_source(
    body: SourceCreate, request: Request, session: DbSession, caller: DocumentsEditor, wake: Wake
) -> dict[str, object]:
    # The context without the `Context` dependency, a plain function FastAPI would run in its thread pool.
    settings = get_context(request).settings
    source = await service.create_source(
        session, settings, body, caller=caller, client=client_address(request), wake=wake
    )
    return envelope({"documentId": source.id, "sourceId": source.id, "state": source.state})


@router.post(
    "/sources/groups",
    response_model=Envelope[SourceIds],
    summary='Ids of the sources of a group of the caller, or of the public ones with groupName ""',
)
async def sources_of_group(body: GroupNameBody, session: DbSession, caller: DocumentsEditor) -> dict[str, object]:
    return envelope({"sources": await service.source_ids_of_group(session, caller, body.groupName)})


@router.get("/sources", response_model=Envelope[SourcePage], summary="The sources the caller may see (extension)")
async def list_sources(
    session: DbSession,
    ctx: Context,
    caller: CurrentPrincipal,
    group: str | None = Query(None, max_length=255, description='Only this group\'s sources; "" for public ones'),
    state: SourceState | None = Query(None),
    page: int = Query(1, ge=1, le=1_000_000),
    perPage: int = Query(50, ge=1, le=500),
) -> dict[str, object]:
    result = await service.list_visible(session, caller, group=group, state=state, page=page, per_page=perPage)
    return envelope(
        {
            "sources": [service.to_out(s, dense=ctx.dense is not None) for s in result.sources],
            "page": page,
            "perPage": perPage,
            "total": result.total,
            "lastPage": max(1, math.ceil(result.total / perPage)),
        }
    )


@router.get("/sources/{sourceId}", response_model=Envelope[SourceOut], summary="A source the caller may see")
async def get_source(sourceId: str, session: DbSession, ctx: Context, caller: CurrentPrincipal) -> dict[str, object]:
    source = await service.get_visible(session, caller, sourceId)
    return envelope(service.to_out(source, dense=ctx.dense is not None))


@router.patch("/sources/{sourceId}", response_model=Envelope[SourceOut], summary="Edit a source; only sent keys change")
async def update_source(
    sourceId: str,
    body: SourceUpdate,
    request: Request,
    session: DbSession,
    ctx: Context,
    caller: DocumentsEditor,
    wake: Wake,
) -> dict[str, object]:
    source = await service.update_source(
        session, ctx.settings, sourceId, body, caller=caller, client=client_address(request), wake=wake
    )
    return envelope(service.to_out(source, dense=ctx.dense is not None))


@router.delete("/sources/{sourceId}", response_model=Envelope[list[str]], summary="Delete a source")
async def delete_source(
    sourceId: str, request: Request, session: DbSession, caller: DocumentsEditor
) -> dict[str, object]:
    await service.delete_source(session, sourceId, caller=caller, client=client_address(request))
    return envelope([])


@router.post(
    "/search",
    response_model=Envelope[SearchResults],
    summary="Retrieve as a chat would (extension)",
    openapi_extra=READ_ONLY,
)
async def search(body: SearchRequest, session: DbSession, ctx: Context, caller: CurrentPrincipal) -> dict[str, object]:
    scope = access.retrieval_scope(caller, body.groups, body.usePublic)
    chunks = await retrieve(
        await session.connection(),
        body.query,
        scope,
        body.k,
        mode=body.mode or ("hybrid" if ctx.dense is not None else "sparse"),
        dense=ctx.dense,
        reranker=ctx.reranker if body.rerank else None,
        language=caller.user.language,
    )
    hits = [
        SearchHit(
            sourceId=c.source_id,
            name=c.source_name,
            score=c.score,
            excerpt=c.text,
            headingPath=list(c.heading_path),
        )
        for c in chunks
    ]
    return envelope({"results": hits})
