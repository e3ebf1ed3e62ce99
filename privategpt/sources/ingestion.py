"""The ingestion job: chunk and index sources, then flip each to `vectorized` or `error`.

A batch of jobs is written in one transaction: the index rows, the new states and the removal of the
jobs, and only for the jobs this worker still holds (`queue.hold`) — a job superseded by newer content,
or taken over after a lost lease, writes nothing. Writing a source's chunks replaces its old ones, so
even a retried job never leaves a source indexed twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence

from sqlalchemy import select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from privategpt.db import Database, on_sqlite_thread
from privategpt.models import Source
from privategpt.rag import PreparedSource, delete_source_chunks, index_prepared_many, prepare_source
from privategpt.rag.retrieval import DEFAULT_PARAMS
from privategpt.rag.store import delete_sqlite, write_sqlite
from privategpt.sources.embedding import PENDING, queue_embedding
from privategpt.worker import queue
from privategpt.worker.queue import ClaimedJob

logger = logging.getLogger(__name__)

# Each chunk is analysed in its detected language; this one is assumed where a whole source is too
# short to tell (sources carry no language of their own).
LANGUAGE = "en"

NO_TEXT = "The content contains no searchable text."
UNSPLITTABLE = "The content could not be split into chunks."


def _prepare_all(documents: dict[str, tuple[str, str]]) -> Results:
    """Chunk and analyse each document; a failure is the error text of that document alone."""
    out: Results = {}
    for source_id, (name, content) in documents.items():
        try:
            prepared = prepare_source(name, content, LANGUAGE)
        except Exception:
            # Deterministic: the same text fails the same way on every retry.
            logger.exception("Chunking source %s failed", source_id)
            out[source_id] = UNSPLITTABLE
            continue
        out[source_id] = prepared if prepared.chunks else NO_TEXT
    return out


Results = dict[str, PreparedSource | str]

_SQLITE_READ = "SELECT id, name, content FROM sources WHERE id IN (SELECT value FROM json_each(?))"
# updated_at is the time of the user's last change, not of the worker's: left as it is.
_SQLITE_SET_STATE = "UPDATE sources SET state = ?, error = ? WHERE id IN (SELECT value FROM json_each(?))"
_SQLITE_SET_EMBEDDING = "UPDATE sources SET embedding_state = ? WHERE id IN (SELECT value FROM json_each(?))"


def _write_sqlite(
    sqlite: sqlite3.Connection, dialect: Dialect, jobs: Sequence[ClaimedJob], results: Results, embed: bool
) -> list[str]:
    """The batch's whole outcome on SQLite's own connection, in one call in its thread: the same writes as
    the general path of `IngestionHandler.run`, without a hop per statement. Returns the indexed sources."""
    held = queue.hold_sqlite(sqlite, jobs)
    ours = {job.source_id: job.id for job in jobs if job.id in held}
    indexed = [(sid, r) for sid, r in results.items() if sid in ours and isinstance(r, PreparedSource)]
    ids = [sid for sid, _ in indexed]
    if indexed:
        write_sqlite(sqlite, indexed, DEFAULT_PARAMS.k1, DEFAULT_PARAMS.b)
        sqlite.execute(_SQLITE_SET_STATE, ("vectorized", None, json.dumps(ids)))
        if embed:
            sqlite.execute(_SQLITE_SET_EMBEDDING, (PENDING, json.dumps(ids)))
            queue.enqueue_sqlite(sqlite, dialect, queue.EMBED, ids)
    for source_id, message in results.items():
        if source_id in ours and isinstance(message, str):
            delete_sqlite(sqlite, [source_id])
            sqlite.execute(_SQLITE_SET_STATE, ("error", message, json.dumps([source_id])))
    queue.finish_sqlite(sqlite, ours.values())
    return ids


class IngestionHandler:
    """Runs `ingest` jobs."""

    def __init__(self, database: Database, *, embed: bool = False) -> None:
        self.database = database
        # Queue dense vectors for what was indexed; `wake` starts the embedding at once after the commit.
        self.embed = embed
        self.wake: Callable[[], None] | None = None

    async def run(self, jobs: Sequence[ClaimedJob]) -> None:
        source_ids = [job.source_id for job in jobs]
        async with self.database.session(write=False) as session:
            connection = await session.connection()
            if connection.dialect.name == "sqlite":
                found = await on_sqlite_thread(
                    connection, lambda sqlite: sqlite.execute(_SQLITE_READ, (json.dumps(source_ids),)).fetchall()
                )
            else:
                found = list(
                    await session.execute(
                        select(Source.id, Source.name, Source.content).where(Source.id.in_(source_ids))
                    )
                )
            documents = {source_id: (name, content) for source_id, name, content in found}
        # CPU work off the event loop, which the API shares in the embedded worker.
        results = await asyncio.to_thread(_prepare_all, documents)
        async with self.database.session(write=True) as session:
            connection = await session.connection()
            if connection.dialect.name == "sqlite":
                # One hop to SQLite's thread for the whole batch (BEGIN IMMEDIATE already serialises it).
                dialect = connection.dialect
                indexed = await on_sqlite_thread(
                    connection, lambda sqlite: _write_sqlite(sqlite, dialect, jobs, results, self.embed)
                )
                if self.embed and indexed:
                    queue.wake_after_commit(session, self.wake)
                return
            ours = await self._lock(session, jobs)
            indexed_sources = [(sid, r) for sid, r in results.items() if sid in ours and isinstance(r, PreparedSource)]
            failed = {sid: r for sid, r in results.items() if sid in ours and isinstance(r, str)}
            if indexed_sources:
                await index_prepared_many(connection, indexed_sources)
                await self._set_state(session, [sid for sid, _ in indexed_sources], "vectorized", None)
                if self.embed:
                    await queue_embedding(session, [sid for sid, _ in indexed_sources], self.wake)
            for source_id, message in failed.items():
                await delete_source_chunks(connection, source_id)
                await self._set_state(session, [source_id], "error", message)
            # Jobs whose source vanished between the read and now have gone with it (cascade).
            await queue.finish(session, ours.values())

    async def give_up(self, jobs: Sequence[ClaimedJob], reason: str) -> None:
        async with self.database.session(write=True) as session:
            ours = await self._lock(session, jobs)
            connection = await session.connection()
            for source_id in ours:
                await delete_source_chunks(connection, source_id)
            await self._set_state(session, list(ours), "error", reason)
            await queue.finish(session, ours.values())

    @staticmethod
    async def _lock(session: AsyncSession, jobs: Sequence[ClaimedJob]) -> dict[str, int]:
        """Lock the sources, then their jobs; returns source id -> job id for the jobs still ours."""
        # Source rows first, then job rows, each in id order: the same order as edits and deletes take,
        # so no two transactions wait on each other in a cycle.
        await session.execute(
            select(Source.id)
            .where(Source.id.in_([job.source_id for job in jobs]))
            .order_by(Source.id)
            .with_for_update()
        )
        held = await queue.hold(session, jobs)
        return {job.source_id: job.id for job in jobs if job.id in held}

    @staticmethod
    async def _set_state(session: AsyncSession, source_ids: list[str], state: str, error: str | None) -> None:
        if not source_ids:
            return
        # updated_at is the time of the user's last change, not of the worker's.
        await session.execute(
            update(Source)
            .where(Source.id.in_(source_ids))
            .values(state=state, error=error, updated_at=Source.updated_at)
        )
