"""The ingestion job: chunk and index one source, then flip it to `vectorized` or `error`.

The index rows and the new state are written in one transaction, which also removes the job, and only
while this worker still holds the job (`queue.hold`): a job superseded by newer content, or taken over
after a lost lease, writes nothing. Rewriting a source's chunks replaces the old ones, so even a retried
job never leaves a source indexed twice.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from privategpt.db import Database
from privategpt.models import Source
from privategpt.rag import PreparedSource, delete_source_chunks, index_prepared, prepare_source
from privategpt.worker import queue
from privategpt.worker.queue import ClaimedJob

logger = logging.getLogger(__name__)

# Sources carry no language yet; the hybrid-retrieval issue makes analysis language-aware.
LANGUAGE = "en"


class IngestionHandler:
    """Runs `ingest` jobs."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def run(self, job: ClaimedJob, worker_id: str) -> None:
        async with self.database.session(write=False) as session:
            row = (
                await session.execute(select(Source.name, Source.content).where(Source.id == job.source_id))
            ).one_or_none()
        if row is None:
            return  # deleted meanwhile; its job went with it
        name, content = row
        try:
            # CPU work off the event loop, which the API shares in the embedded worker.
            prepared = await asyncio.to_thread(prepare_source, name, content, LANGUAGE)
        except Exception:
            # Deterministic: the same text fails the same way on every retry.
            logger.exception("Chunking source %s failed", job.source_id)
            await self._fail(job, worker_id, "The content could not be split into chunks.")
            return
        if not prepared.chunks:
            await self._fail(job, worker_id, "The content contains no searchable text.")
            return
        await self._complete(job, worker_id, prepared)

    async def give_up(self, job: ClaimedJob, worker_id: str, reason: str) -> None:
        await self._fail(job, worker_id, reason)

    async def _lock_source(self, session: AsyncSession, source_id: str) -> bool:
        # Source row first, then the job row: the same order as edits and deletes, so none deadlock.
        locked = await session.scalar(select(Source.id).where(Source.id == source_id).with_for_update())
        return locked is not None

    async def _complete(self, job: ClaimedJob, worker_id: str, prepared: PreparedSource) -> None:
        async with self.database.session(write=True) as session:
            if not await self._lock_source(session, job.source_id) or not await queue.hold(session, job, worker_id):
                return
            await index_prepared(await session.connection(), job.source_id, prepared)
            await self._set_state(session, job.source_id, "vectorized", None)
            await queue.finish(session, job)

    async def _fail(self, job: ClaimedJob, worker_id: str, message: str) -> None:
        async with self.database.session(write=True) as session:
            if not await self._lock_source(session, job.source_id) or not await queue.hold(session, job, worker_id):
                return
            await delete_source_chunks(await session.connection(), job.source_id)
            await self._set_state(session, job.source_id, "error", message)
            await queue.finish(session, job)

    @staticmethod
    async def _set_state(session: AsyncSession, source_id: str, state: str, error: str | None) -> None:
        # updated_at is the time of the user's last change, not of the worker's.
        await session.execute(
            update(Source).where(Source.id == source_id).values(state=state, error=error, updated_at=Source.updated_at)
        )
