"""Chats: the question-answering pipeline, and reading, listing and deleting a caller's chats.

`ask` is the whole pipeline, top to bottom:

1. the chat: a new one's settings, or the caller's own existing chat (anyone else's is a 404);
2. access, checked again on every question: every group of the chat must still be one of the caller's
   and `usePublic` must still be allowed (403), and the resulting scope is what retrieval searches;
3. the busy lock of an existing chat, held in the database (409 while another question runs);
4. the question's embedding (dense and hybrid retrieval), then history (only when the scenario uses it)
   and retrieval (only with a scope and a store retriever), read statement by statement;
5. the prompt, fitted into the context budget;
6. the language model, whole or streamed;
7. the question, its answer and the cited sources saved in one transaction that also releases the lock.

A failure anywhere after step 3 (LLM error or timeout, a client that disconnects from a stream)
releases the lock and saves nothing, so the chat's history is exactly as before the question.

Many questions at once (measured by `bench/bench_chat.py concurrency`):

* No database connection is held while waiting: not for the model, and not for the query's embedding
  either (the local embedder answers one query at a time, so with many questions most of them wait in
  its queue; holding a connection meanwhile emptied the pool for everyone else).
* At most `TURNS` questions do their database and CPU work at a time (authentication, steps 1-4, and the
  saving), in arrival order (`turn`). The event loop serves ready tasks one after the other, so fifty
  questions interleaving step by step all reached the model late and together, their answers came back
  together and were saved together, and any other request (`GET /groups`) waited behind all of their
  steps. Taken a few at a time, each question reaches the model as early as the CPU allows and other
  requests only wait behind a few steps. Waiting for the embedder and for the model takes no turn.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import weakref
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import cast

import anyio
from sqlalchemy import (
    CursorResult,
    Integer,
    String,
    bindparam,
    column,
    delete,
    func,
    insert,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from privategpt import access
from privategpt.auth.principal import Principal
from privategpt.chats.prompt import Candidate, Turn, build_prompt
from privategpt.chats.schemas import ChatAnswer, ChatMessageOut, ChatOut, ChatSummary, SourceRef
from privategpt.config import Settings
from privategpt.db import Database, DriverQuery, DriverWrite, Write, run_writes
from privategpt.embeddings import Vectors
from privategpt.errors import Conflict, NotFound
from privategpt.llm import LanguageModel, Prompt, sampling_for
from privategpt.models import Chat, ChatMessage, Scenario, Source, new_uuid, utcnow
from privategpt.rag import RetrievalScope, ScoredChunk
from privategpt.rag.hybrid import DenseIndex, RetrievalMode, retrieve
from privategpt.reranking import Reranker
from privategpt.scenarios import service as scenarios

logger = logging.getLogger(__name__)

NOT_FOUND = "Chat not found."
BUSY = "This chat is still answering another question; ask again when it is done."
TITLE_MAX = 100
EXCERPT_CHARS = 300
# Prompts over passages this long are built in a thread rather than on the event loop.
_INLINE_PROMPT_CHARS = 50_000
# `document_store`: chunks ranked to find the best `k` documents.
_DOCUMENT_CANDIDATE_CHUNKS = 100
# Questions doing their database and CPU work at once (per process, see `turn`): enough to overlap one
# question's database round trips with another's Python work, few enough that other requests are not
# queued behind the steps of every question in progress.
TURNS = 4


# -- the pipeline ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """One question: to a new chat (with its settings) or to an existing one (`chat_id`)."""

    text: str
    chat_id: str | None = None
    language: str | None = None
    groups: Sequence[str] = ()
    use_public: bool = False
    scenario_id: str | None = None


@dataclass(frozen=True)
class Started:
    """The question was accepted and the model is about to answer (streaming only)."""

    chat_id: str


@dataclass(frozen=True)
class AnswerPiece:
    """A piece of the answer as the model produces it (streaming only)."""

    text: str


@dataclass(frozen=True)
class Answered:
    """The saved answer: the same data the JSON call returns."""

    result: ChatAnswer


ChatEvent = Started | AnswerPiece | Answered


@dataclass(frozen=True)
class _ChatSettings:
    id: str
    is_new: bool
    language: str
    groups: list[str]
    use_public: bool
    scenario_id: str | None


async def ask(
    database: Database,
    settings: Settings,
    llm: LanguageModel,
    caller: Principal,
    question: Question,
    *,
    stream: bool,
    dense: DenseIndex | None = None,
    reranker: Reranker | None = None,
) -> AsyncGenerator[ChatEvent]:
    """Answer a question; when streaming, yields `Started` and the answer's pieces; always ends with `Answered`."""
    # Reads statement by statement, each seeing the latest commit (PostgreSQL's READ COMMITTED; on SQLite no
    # BEGIN and COMMIT around them, two hops to its thread of a question's dozen): retrieval already reads
    # every chunk it returns again under the scope, so a source moved or deleted meanwhile is left out.
    reads = database.engine_for(write=False, snapshot=False)
    async with turn(), reads.connect() as conn:
        # 1. The chat, its scenario, and whether the embedding model is the one in service: one round trip.
        chat, scenario, dense_active = await _chat_settings(conn, caller, question, dense)

        # 2. Access, again on every question.
        scope = access.retrieval_scope(caller, chat.groups, chat.use_public)
        searched = not scope.is_empty and scenario.context_retriever_type != "none"
        vectors = searched and dense_active and _retrieval_mode(scenario) != "sparse"
        embedder = dense.embedder if vectors and dense is not None else None
        retrieve_passages = functools.partial(
            _retrieve, settings, scenario, scope, question.text, chat.language, dense, reranker
        )

        # A new chat is unknown to everyone until it is saved: it needs no lock and has no history, so its
        # passages are read right here, unless the question must be embedded first (that waits with no
        # connection held).
        candidates: list[Candidate] = []
        passages_read = chat.is_new and embedder is None
        if passages_read and searched:
            candidates = await retrieve_passages(conn)

    # 3. The busy lock of an existing chat.
    lock = None if chat.is_new else await ChatLock.acquire(database, chat.id, caller.user.id, settings)
    saved = False
    try:
        # 4. The question's vector, then history and passages, read after the lock is taken so that the
        # previous answer is in.
        query_vector = None if embedder is None else await embedder.embed_query(question.text)
        history: list[Turn] = []
        with_history = not chat.is_new and scenario.use_history
        if with_history or (searched and not passages_read):
            async with turn(), reads.connect() as conn:
                if with_history:
                    history = await _history(conn, caller, chat.id)
                if searched and not passages_read:
                    candidates = await retrieve_passages(conn, query_vector)

        # 5. The prompt; whole documents make it CPU work worth a thread.
        build = functools.partial(
            build_prompt,
            system_pre_prompt=scenario.system_pre_prompt,
            user_pre_prompt=scenario.user_pre_prompt,
            user_post_prompt=scenario.user_post_prompt,
            language=chat.language,
            question=question.text,
            searched=searched,
            candidates=candidates,
            history=history,
            budget_tokens=settings.llm_context_tokens - settings.llm_max_tokens,
        )
        big = sum(len(c.text) for c in candidates) > _INLINE_PROMPT_CHARS
        prompt = await asyncio.to_thread(build) if big else build()

        # 6. The language model.
        sampling = sampling_for(scenario.creativity)
        if stream:
            yield Started(chat.id)
            pieces: list[str] = []
            async for piece in llm.stream(prompt, sampling):
                pieces.append(piece)
                yield AnswerPiece(piece)
            answer = "".join(pieces)
        else:
            answer = await llm.complete(prompt, sampling)

        # 7. Saved, with the lock released, in one transaction.
        result = await _save(database, caller, chat, scenario, lock, question.text, answer, prompt, history)
        saved = True
    finally:
        if lock is not None:
            # Also runs when a streaming client disconnects and the answer is cancelled mid-way.
            with anyio.CancelScope(shield=True):
                await lock.close(released=saved)
    yield Answered(result)


_SCENARIOS = Scenario.__table__
_CHATS = Chat.__table__
_MODELS = table("rag_embedding_models", column("id", Integer), column("state", String))
# The state of the embedding model the server embeds queries with (NULL without one).
_DENSE_STATE = select(_MODELS.c.state).where(_MODELS.c.id == bindparam("model_id", type_=Integer)).scalar_subquery()
_WIDTH = len(scenarios.CHAT_SCENARIO_COLUMNS)
# A new chat's settings: the scenario it names and the default one (`scenarios.scenario_for_new_chat` chooses).
_NEW_CHAT_SETTINGS = DriverQuery(
    select(*scenarios.CHAT_SCENARIO_COLUMNS, _DENSE_STATE).where(
        scenarios.chat_scenario_choices(bindparam("scenario_id", type_=String))
    )
)
# An existing chat of the caller's, on one row per scenario it may continue with (its own and the default).
_OWN_CHAT_SETTINGS = DriverQuery(
    select(
        *scenarios.CHAT_SCENARIO_COLUMNS,
        _DENSE_STATE,
        _CHATS.c.language,
        _CHATS.c.groups,
        _CHATS.c.use_public,
        _CHATS.c.scenario_id,
    )
    .join_from(_CHATS, _SCENARIOS, scenarios.chat_scenario_choices(_CHATS.c.scenario_id))
    .where(_CHATS.c.id == bindparam("chat_id", type_=String), _CHATS.c.user_id == bindparam("user_id", type_=Integer))
)


async def _chat_settings(
    conn: AsyncConnection, caller: Principal, question: Question, dense: DenseIndex | None
) -> tuple[_ChatSettings, scenarios.ChatScenario, bool]:
    """The chat (a new one's settings or the caller's own; anyone else's is a 404), its scenario, and
    whether the dense index's model is the one in service (not still being built after a change)."""
    model_id = None if dense is None else dense.model.id
    if question.chat_id is None:
        rows = await _NEW_CHAT_SETTINGS.all(conn, scenario_id=question.scenario_id, model_id=model_id)
        scenario = scenarios.scenario_for_new_chat(rows, question.scenario_id)
        # The names as the groups spell them; unknown ones are left for the access check to refuse.
        own = {g.name_key: g.name for g in caller.user.groups}
        chat = _ChatSettings(
            id=new_uuid(),
            is_new=True,
            language=question.language or caller.user.language,
            groups=list(dict.fromkeys(own.get(g.strip().casefold(), g) for g in question.groups)),
            use_public=question.use_public,
            scenario_id=question.scenario_id,
        )
    else:
        rows = await _OWN_CHAT_SETTINGS.all(conn, chat_id=question.chat_id, user_id=caller.user.id, model_id=model_id)
        if not rows:
            raise NotFound(NOT_FOUND)
        language, groups, use_public, scenario_id = rows[0][_WIDTH + 1 :]
        scenario = scenarios.scenario_of_chat(rows, scenario_id)
        chat = _ChatSettings(
            id=question.chat_id,
            is_new=False,
            language=language,
            groups=list(groups),
            use_public=bool(use_public),
            scenario_id=scenario_id,
        )
    return chat, scenario, rows[0][_WIDTH] == "active"


async def _history(conn: AsyncConnection, caller: Principal, chat_id: str) -> list[Turn]:
    """Earlier turns, oldest first, leaving out any produced from a source the caller can no longer see.

    A turn's answer may quote its passages and, through history, the turns before it; so what decides
    is every source behind it (`context_source_ids`), not only the ones it cited.
    """
    messages = await _HISTORY.all(conn, chat_id=chat_id)
    visible = await _visible_source_ids(conn, caller, {i for _, _, ids in messages for i in ids})
    return [Turn(question, answer, frozenset(ids)) for question, answer, ids in messages if visible.issuperset(ids)]


# A chat's turns, oldest first (one hop to SQLite's thread where SQLAlchemy's cursor takes four).
_MESSAGES = ChatMessage.__table__
_HISTORY = DriverQuery(
    select(_MESSAGES.c.question, _MESSAGES.c.answer, _MESSAGES.c.context_source_ids)
    .where(_MESSAGES.c.chat_id == bindparam("chat_id", type_=String))
    .order_by(_MESSAGES.c.position)
)


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def turn() -> asyncio.Semaphore:
    """What a question holds (`async with turn():`) while it does database and CPU work: `TURNS` at once
    per event loop, in arrival order. Never held while waiting for the embedder or the model."""
    loop = asyncio.get_running_loop()
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = asyncio.Semaphore(TURNS)
    return turns


def _retrieval_mode(scenario: scenarios.ChatScenario) -> RetrievalMode:
    """The retrieval core's mode for a scenario's `use_sparse`/`use_dense` flags (validation keeps one on)."""
    if scenario.use_dense:
        return "hybrid" if scenario.use_sparse else "dense"
    return "sparse"


async def _retrieve(
    settings: Settings,
    scenario: scenarios.ChatScenario,
    scope: RetrievalScope,
    query: str,
    language: str,
    dense: DenseIndex | None,
    reranker: Reranker | None,
    conn: AsyncConnection,
    query_vector: Vectors | None = None,
) -> list[Candidate]:
    """Passages from the documents in scope: chunks, or whole documents for `document_store`."""
    whole_documents = scenario.context_retriever_type == "document_store"
    chunks = await retrieve(
        conn,
        query,
        scope,
        _DOCUMENT_CANDIDATE_CHUNKS if whole_documents else scenario.k,
        scenario.similarity_threshold,
        _retrieval_mode(scenario),
        dense=dense,
        query_vector=query_vector,
        reranker=reranker if scenario.use_reranking else None,
        language=language,
    )
    if not whole_documents:
        return [Candidate(c.source_id, c.source_name, c.text, c.score) for c in chunks]
    # Whole documents: rank documents by their best chunk, then give the k best in full.
    best: dict[str, ScoredChunk] = {}
    for chunk in chunks:
        best.setdefault(chunk.source_id, chunk)
    ranked = list(best.values())[: scenario.k]
    # No character is estimated below a quarter token: more than this could never fit the prompt.
    max_chars = 4 * settings.llm_context_tokens
    contents = await _documents_in_scope(conn, scope, [c.source_id for c in ranked], max_chars)
    return [
        Candidate(c.source_id, contents[c.source_id][0], contents[c.source_id][1], c.score)
        for c in ranked
        if c.source_id in contents
    ]


async def _documents_in_scope(
    conn: AsyncConnection, scope: RetrievalScope, ids: list[str], max_chars: int
) -> dict[str, tuple[str, str]]:
    """Name and content (its first `max_chars`) of these sources, read again under the scope.

    Reading them again means a move or delete since retrieval applies at once.
    """
    if not ids:
        return {}
    rows = await conn.execute(
        select(Source.id, Source.name, func.substr(Source.content, 1, max_chars).label("content")).where(
            Source.id.in_(ids), access.retrieval_scope_clause(scope)
        )
    )
    return {row.id: (row.name, row.content) for row in rows}


def _excerpt(text: str) -> str:
    """The start of a passage, cut at a word boundary (verbatim, no ellipsis added)."""
    if len(text) <= EXCERPT_CHARS:
        return text
    cut = text[:EXCERPT_CHARS]
    space = cut.rfind(" ")
    return cut[:space] if space > EXCERPT_CHARS // 2 else cut


def cited_sources(prompt: Prompt) -> list[SourceRef]:
    """One entry per numbered source of the prompt, in number order, with its best passage."""
    refs: dict[int, SourceRef] = {}
    for passage in prompt.passages:
        if passage.number not in refs:
            refs[passage.number] = SourceRef(
                sourceId=passage.source_id,
                name=passage.source_name,
                page=0,
                score=round(passage.score, 4),
                excerpt=_excerpt(passage.text),
            )
    return [refs[n] for n in sorted(refs)]


def title_of(question: str) -> str:
    """A chat's title: its first question on one line, shortened."""
    line = " ".join(question.split())
    return line if len(line) <= TITLE_MAX else line[: TITLE_MAX - 1].rstrip() + "…"


_CHAT_COLUMNS = (
    "id",
    "user_id",
    "title",
    "language",
    "use_public",
    "groups",
    "scenario_id",
    "created_at",
    "updated_at",
)
_INSERT_CHAT = DriverWrite(insert(Chat).values({c: bindparam(c) for c in _CHAT_COLUMNS}))
_MESSAGE_COLUMNS = (
    "chat_id",
    "question",
    "answer",
    "language",
    "sources",
    "context_source_ids",
    "created_at",
)
# A chat's next message, numbered after its last one (0 for the first) by the INSERT itself: one statement
# where reading the last position first took two. The chat's lock keeps other questions of the chat out.
# `of_chat` is the chat's id again: `chat_id`, a column's name, is reserved for that column's VALUES parameter.
_NEXT_POSITION = (
    select(func.coalesce(func.max(ChatMessage.position) + 1, 0))
    .where(ChatMessage.chat_id == bindparam("of_chat", type_=String))
    .scalar_subquery()
)
_INSERT_MESSAGE = DriverWrite(
    insert(ChatMessage).values({**{c: bindparam(c) for c in _MESSAGE_COLUMNS}, "position": _NEXT_POSITION})
)


async def _save(
    database: Database,
    caller: Principal,
    chat: _ChatSettings,
    scenario: scenarios.ChatScenario,
    lock: ChatLock | None,
    question: str,
    answer: str,
    prompt: Prompt,
    history: Sequence[Turn],
) -> ChatAnswer:
    """The question and its answer saved; a new chat with it. Core statements on the driver's connection
    (`db.run_writes`), not the ORM: a new chat's whole write is one round trip to SQLite's thread."""
    sources = cited_sources(prompt)
    context = {p.source_id for p in prompt.passages}.union(*(t.context_source_ids for t in history))
    now = utcnow()
    message = {
        "chat_id": chat.id,
        "of_chat": chat.id,
        "question": question,
        "answer": answer,
        "language": chat.language,
        "sources": [s.model_dump() for s in sources],
        "context_source_ids": sorted(context),
        "created_at": now,
    }
    async with turn(), database.engine_for(write=True).begin() as conn:
        writes: list[Write] = []
        if chat.is_new:
            new_chat = {
                "id": chat.id,
                "user_id": caller.user.id,
                "title": title_of(question),
                "language": chat.language,
                "use_public": chat.use_public,
                "groups": chat.groups,
                "scenario_id": scenario.id,
                "created_at": now,
                "updated_at": now,
            }
            writes.append((_INSERT_CHAT, [new_chat]))
        else:
            assert lock is not None
            await lock.release_in(conn, now)
        writes.append((_INSERT_MESSAGE, [message]))
        await run_writes(conn, writes)
    return ChatAnswer(chatId=chat.id, answer=answer, sources=sources)


# -- the busy lock --------------------------------------------------------------------------------

_OWNED_LOCK = (Chat.id == bindparam("chat_id", type_=String), Chat.locked_by == bindparam("owner"))
# The lock of the caller's chat, taken unless another question holds it (its lease not yet lapsed).
_TAKE_LOCK = DriverWrite(
    update(Chat)
    .where(
        Chat.id == bindparam("chat_id", type_=String),
        Chat.user_id == bindparam("caller_id", type_=Integer),  # not `user_id`: a column's name is reserved
        or_(Chat.locked_until.is_(None), Chat.locked_until < bindparam("now")),
    )
    .values(locked_by=bindparam("owner"), locked_until=bindparam("until"))
)
_RENEW_LOCK = DriverWrite(update(Chat).where(*_OWNED_LOCK).values(locked_until=bindparam("until")))
_RELEASE_LOCK = DriverWrite(update(Chat).where(*_OWNED_LOCK).values(locked_by=None, locked_until=None))
# Released by the transaction that saves the answer, which also marks the chat as updated.
_RELEASE_LOCK_ON_SAVE = DriverWrite(
    update(Chat).where(*_OWNED_LOCK).values(locked_by=None, locked_until=None, updated_at=bindparam("now"))
)
_CHAT_EXISTS = DriverQuery(select(Chat.id).where(Chat.id == bindparam("chat_id", type_=String)))


@dataclass
class ChatLock:
    """A chat's busy lock: a row-level lease in the database, so it holds across server processes.

    `locked_until` is pushed forward every third of the lease while the answer is produced; a process
    that dies stops pushing, and the lock lapses at most `chat_lock_seconds` later.
    """

    database: Database
    chat_id: str
    owner: str
    lease: timedelta
    _closing: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _renewer: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def acquire(cls, database: Database, chat_id: str, user_id: int, settings: Settings) -> ChatLock:
        """Take the lock of the caller's chat, or raise 409 while another question holds it."""
        lock = cls(database, chat_id, secrets.token_hex(16), timedelta(seconds=settings.chat_lock_seconds))
        now = utcnow()
        async with database.engine_for(write=True).begin() as conn:
            taken = (
                await _TAKE_LOCK.run(
                    conn, chat_id=chat_id, caller_id=user_id, now=now, owner=lock.owner, until=now + lock.lease
                )
                == 1
            )
            if not taken and not await _CHAT_EXISTS.all(conn, chat_id=chat_id):
                raise NotFound(NOT_FOUND)  # deleted since it was read
        if not taken:
            raise Conflict(BUSY)
        lock._renewer = asyncio.create_task(lock._renew_until_closed())
        return lock

    async def _renew_until_closed(self) -> None:
        period = self.lease.total_seconds() / 3
        while True:
            # Woken by `close` rather than cancelled, so a renewal is never cut off half-way.
            try:
                await asyncio.wait_for(self._closing.wait(), period)
                return
            except TimeoutError:
                pass
            try:
                async with self.database.engine_for(write=True).begin() as conn:
                    await _RENEW_LOCK.run(conn, chat_id=self.chat_id, owner=self.owner, until=utcnow() + self.lease)
            except Exception:
                # A missed renewal only shortens the lease; the next one may well succeed.
                logger.warning("Could not renew the lock of chat %s", self.chat_id, exc_info=True)

    async def release_in(self, conn: AsyncConnection, now: object) -> None:
        """Release the lock inside the saving transaction; 404/409 if the chat went or the lock was lost."""
        released = await _RELEASE_LOCK_ON_SAVE.run(conn, chat_id=self.chat_id, owner=self.owner, now=now)
        if released != 1:
            exists = await _CHAT_EXISTS.all(conn, chat_id=self.chat_id)
            if not exists:
                raise NotFound("The chat was deleted while the answer was being produced.")
            raise Conflict("The chat's lock lapsed while the answer was being produced; please ask again.")

    async def close(self, *, released: bool) -> None:
        """Stop renewing; release the lock unless the saving transaction already did."""
        self._closing.set()
        if self._renewer is not None:
            await self._renewer
        if released:
            return
        try:
            async with self.database.engine_for(write=True).begin() as conn:
                await _RELEASE_LOCK.run(conn, chat_id=self.chat_id, owner=self.owner)
        except Exception:
            # The lease runs out by itself; the chat is busy a little longer, never for good.
            logger.warning("Could not release the lock of chat %s", self.chat_id, exc_info=True)


# -- reading, listing, deleting -------------------------------------------------------------------


async def _own_chat(session: AsyncSession, caller: Principal, chat_id: str) -> Chat:
    """The caller's chat; another user's chat and a missing one are the same 404."""
    chat = await session.scalar(select(Chat).where(Chat.id == chat_id, Chat.user_id == caller.user.id))
    if chat is None:
        raise NotFound(NOT_FOUND)
    return chat


async def _visible_source_ids(conn: AsyncConnection, caller: Principal, ids: set[str]) -> set[str]:
    if not ids:
        return set()
    rows = await conn.scalars(
        select(Source.id).where(Source.id.in_(sorted(ids)), access.visible_sources_clause(caller))
    )
    return set(rows)


def _is_locked(chat: Chat) -> bool:
    return chat.locked_until is not None and chat.locked_until > utcnow()


def _summary(chat: Chat) -> ChatSummary:
    return ChatSummary(
        chatId=chat.id,
        title=chat.title,
        language=chat.language,
        usePublic=chat.use_public,
        groups=list(chat.groups),
        scenarioId=chat.scenario_id,
        isLocked=_is_locked(chat),
        createdAt=chat.created_at,
        updatedAt=chat.updated_at,
    )


async def get_chat(session: AsyncSession, caller: Principal, chat_id: str) -> ChatOut:
    """A chat with its messages; cited sources the caller can no longer see are left out of them."""
    chat = await _own_chat(session, caller, chat_id)
    messages = list(
        await session.scalars(select(ChatMessage).where(ChatMessage.chat_id == chat.id).order_by(ChatMessage.position))
    )
    visible = await _visible_source_ids(
        await session.connection(), caller, {s["sourceId"] for m in messages for s in m.sources}
    )
    return ChatOut(
        **_summary(chat).model_dump(),
        messages=[
            ChatMessageOut(
                question=m.question,
                answer=m.answer,
                language=m.language,
                sources=[SourceRef(**s) for s in m.sources if s["sourceId"] in visible],
                createdAt=m.created_at,
            )
            for m in messages
        ],
    )


@dataclass(frozen=True)
class ChatListing:
    chats: list[ChatSummary]
    total: int


async def list_chats(session: AsyncSession, caller: Principal, *, page: int, per_page: int) -> ChatListing:
    """The caller's chats, newest first."""
    mine = Chat.user_id == caller.user.id
    total = await session.scalar(select(func.count()).select_from(Chat).where(mine)) or 0
    rows = await session.scalars(
        select(Chat)
        .where(mine)
        .order_by(Chat.created_at.desc(), Chat.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return ChatListing(chats=[_summary(c) for c in rows], total=total)


async def delete_chat(session: AsyncSession, caller: Principal, chat_id: str) -> None:
    """Delete one of the caller's chats with its messages (an answer in progress is then not saved)."""
    chat = await _own_chat(session, caller, chat_id)
    await session.execute(delete(Chat).where(Chat.id == chat.id))


async def flush_chats(session: AsyncSession, caller: Principal) -> int:
    """Delete all of the caller's chats; returns how many."""
    result = await session.execute(delete(Chat).where(Chat.user_id == caller.user.id))
    return cast(CursorResult[object], result).rowcount
