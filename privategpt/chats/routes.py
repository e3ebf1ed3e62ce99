"""Chat endpoints (any active user, own chats only), as JSON or, with `Accept: text/event-stream`, streamed.

Streaming (extension): the new/continue calls answer with server-sent events when the client accepts
`text/event-stream`:

* `event: chat` — `{"chatId": ...}`, first;
* `event: delta` — `{"text": ...}`, a piece of the answer, as many as the model produces;
* `event: done` — the very envelope the JSON call returns (`data.answer` is the whole answer), last;
* `event: error` — an error envelope, instead of `done`, if the model fails mid-way.

Errors found before the model produces anything (validation, 403, 404, 409, and a model that fails
before its first word) are ordinary JSON error responses with their status code.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from privategpt.auth import service as auth_service
from privategpt.auth.dependencies import CurrentPrincipal
from privategpt.auth.principal import Principal
from privategpt.chats import service
from privategpt.chats.schemas import (
    NOTICE,
    AnswerEnvelope,
    ChatAnswer,
    ChatContinue,
    ChatCreate,
    ChatOut,
    ChatPage,
)
from privategpt.context import get_context
from privategpt.errors import AppError, envelope
from privategpt.llm import LanguageModel
from privategpt.schemas import Empty, Envelope
from privategpt.unit_of_work import DbSession, UnitOfWorkRoute

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/chats", tags=["chats"], route_class=UnitOfWorkRoute)

_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"description": "With `Accept: text/event-stream`: events chat, delta, done"}}
    },
    409: {"description": "The chat is answering another question"},
    502: {"description": "The language model failed"},
    503: {"description": "The language model is not reachable"},
    504: {"description": "The language model did not answer in time"},
}


async def _chat_caller(request: Request) -> Principal:
    """The caller, authenticated on a connection held for that one statement.

    Answering takes as long as the model thinks; the usual per-request unit of work would keep a
    database connection (and on SQLite the write lock) for all that time. Like the rest of a question's
    database work, it waits for its turn (`service.turn`). One statement needs no transaction: on SQLite
    it is then one hop to the driver's thread instead of three (BEGIN, the query, COMMIT).
    """
    engine = get_context(request).database.engine_for(write=False, snapshot=False)
    async with service.turn(), engine.connect() as connection:
        user, token_id = await auth_service.authenticate(
            connection,
            authorization=request.headers.get("authorization"),
            authentication=request.headers.get("authentication"),
        )
    return Principal(user=user, token_id=token_id)


ChatCaller = Annotated[Principal, Depends(_chat_caller)]


def get_llm(request: Request) -> LanguageModel:
    llm: LanguageModel = request.app.state.llm
    return llm


LLM = Annotated[LanguageModel, Depends(get_llm)]


def _answer_envelope(result: ChatAnswer) -> dict[str, Any]:
    return envelope(result.model_dump(), notice=NOTICE)


def _wants_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "").lower()


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _sse_of(event: service.ChatEvent) -> bytes:
    if isinstance(event, service.Started):
        return _sse("chat", {"chatId": event.chat_id})
    if isinstance(event, service.AnswerPiece):
        return _sse("delta", {"text": event.text})
    return _sse("done", _answer_envelope(event.result))


class _EventStream(StreamingResponse):
    """A streaming response that always closes the answer's pipeline, also when the client goes away.

    Starlette stops iterating a stream whose client disconnected by cancelling it; closing the pipeline
    here (shielded from that cancellation) is what releases the chat's lock without saving anything.
    """

    def __init__(self, events: AsyncGenerator[service.ChatEvent], body: AsyncGenerator[bytes]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = events
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._body.aclose()
                await self._events.aclose()


async def _respond(
    request: Request, llm: LanguageModel, caller: Principal, question: service.Question
) -> dict[str, Any] | StreamingResponse:
    ctx = get_context(request)
    if not _wants_stream(request):
        async with aclosing(
            service.ask(
                ctx.database, ctx.settings, llm, caller, question, stream=False, dense=ctx.dense, reranker=ctx.reranker
            )
        ) as events:
            async for event in events:
                if isinstance(event, service.Answered):
                    return _answer_envelope(event.result)
        raise RuntimeError("the chat pipeline ended without an answer")

    events = service.ask(
        ctx.database, ctx.settings, llm, caller, question, stream=True, dense=ctx.dense, reranker=ctx.reranker
    )
    # Run up to the model's first piece here, so that refusals and a model that fails at once are
    # answered with their status code rather than inside a stream that already said 200.
    ready: list[service.ChatEvent] = []
    try:
        while not ready or isinstance(ready[-1], service.Started):
            ready.append(await anext(events))
    except BaseException:
        await events.aclose()
        raise

    async def body() -> AsyncGenerator[bytes]:
        try:
            for event in ready:
                yield _sse_of(event)
            async for event in events:
                yield _sse_of(event)
        except AppError as exc:
            yield _sse("error", {"data": {}, "message": exc.message, "status": exc.status_code})
        except Exception:
            logger.exception("Chat stream failed")
            yield _sse("error", {"data": {}, "message": "Internal server error.", "status": 500})

    return _EventStream(events, body())


@router.post(
    "",
    response_model=AnswerEnvelope,
    responses=_STREAM_RESPONSES,
    summary="Start a chat with a first question",
)
async def new_chat(body: ChatCreate, request: Request, caller: ChatCaller, llm: LLM) -> Any:
    question = service.Question(
        text=body.question,
        language=body.language,
        groups=body.groups or [],
        use_public=bool(body.usePublic),
        scenario_id=body.scenarioId,
    )
    return await _respond(request, llm, caller, question)


@router.get("", response_model=Envelope[ChatPage], summary="The caller's chats, newest first (extension)")
async def list_chats(
    session: DbSession,
    caller: CurrentPrincipal,
    page: int = Query(1, ge=1, le=1_000_000),
    perPage: int = Query(20, ge=1, le=100),
) -> dict[str, object]:
    listing = await service.list_chats(session, caller, page=page, per_page=perPage)
    return envelope(
        ChatPage(
            chats=listing.chats,
            page=page,
            perPage=perPage,
            total=listing.total,
            lastPage=max(1, math.ceil(listing.total / perPage)),
        )
    )


# Declared before /{chat_id}: `flush` is not a chat id.
@router.delete("/flush", response_model=Envelope[Empty], summary="Delete all of the caller's chats")
async def flush_chats(session: DbSession, caller: CurrentPrincipal) -> dict[str, object]:
    await service.flush_chats(session, caller)
    return envelope({})


@router.get("/{chat_id}", response_model=Envelope[ChatOut], summary="A chat with its messages and sources")
async def get_chat(chat_id: str, session: DbSession, caller: CurrentPrincipal) -> dict[str, object]:
    return envelope(await service.get_chat(session, caller, chat_id))


async def _continue(chat_id: str, body: ChatContinue, request: Request, caller: Principal, llm: LanguageModel) -> Any:
    return await _respond(request, llm, caller, service.Question(text=body.question, chat_id=chat_id))


@router.patch("/{chat_id}", response_model=AnswerEnvelope, responses=_STREAM_RESPONSES, summary="Continue a chat")
async def continue_chat(chat_id: str, body: ChatContinue, request: Request, caller: ChatCaller, llm: LLM) -> Any:
    return await _continue(chat_id, body, request, caller, llm)


@router.post(
    "/{chat_id}",
    response_model=AnswerEnvelope,
    responses=_STREAM_RESPONSES,
    summary="Continue a chat (v1 spelling of PATCH)",
)
async def continue_chat_v1(chat_id: str, body: ChatContinue, request: Request, caller: ChatCaller, llm: LLM) -> Any:
    return await _continue(chat_id, body, request, caller, llm)


@router.delete("/{chat_id}", response_model=Envelope[Empty], summary="Delete a chat")
async def delete_chat(chat_id: str, session: DbSession, caller: CurrentPrincipal) -> dict[str, object]:
    await service.delete_chat(session, caller, chat_id)
    return envelope({})
