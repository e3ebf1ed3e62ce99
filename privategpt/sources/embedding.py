"""Dense vectors for indexed sources: the `embed` job, and keeping the vectors in step with the model.

A source is searchable by BM25 (`vectorized`) as soon as its lexical index is written; its ingestion then
queues an `embed` job, and dense retrieval finds the source once the job has written its vectors. The
local model embeds a few passages a second, so a job writes its vectors in small batches, each in its own
transaction: a long document's progress survives a restart, and a chat never waits for a whole document.

`sources.embedding_state` says where a source stands for the configured model: `pending` until its last
chunk has a vector, then `done`. A model that differs from the active one (another name, or another
dimension) gets its vectors built beside the active ones; the transaction that writes the last missing
vector switches over to it and drops the old vectors, so retrieval never mixes two models' vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import String, and_, exists, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from privategpt.config import Settings
from privategpt.db import Database
from privategpt.embeddings import Embedder, EmbeddingFailed, open_embedder
from privategpt.models import Job, Source
from privategpt.rag import vectors
from privategpt.rag.hybrid import DenseIndex, chunk_embedding_text
from privategpt.rag.vectors import EmbeddingModel
from privategpt.worker import queue
from privategpt.worker.queue import ClaimedJob

logger = logging.getLogger(__name__)

PENDING = "pending"
DONE = "done"

# Passages embedded (and written) together: small enough that a write lands every few seconds on the
# local CPU model, large enough for a remote server's batching to pay off.
EMBED_BATCH = 32


class EmbeddingHandler:
    """Runs `embed` jobs for one model (the configured embedder's)."""

    def __init__(self, database: Database, embedder: Embedder, model: EmbeddingModel) -> None:
        self.database = database
        self.embedder = embedder
        self.model = model
        # Awaited before each step: returns when embedding may use the machine (`Worker.settled`).
        self.pause: Callable[[], Awaitable[None]] | None = None

    async def run(self, jobs: Sequence[ClaimedJob]) -> None:
        held = list(jobs)
        while held:
            if self.pause is not None:
                await self.pause()
            async with self.database.session(write=False) as session:
                batch = await vectors.chunks_missing_vectors(
                    await session.connection(),
                    self.model.id,
                    source_ids=[job.source_id for job in held],
                    limit=EMBED_BATCH,
                )
            if not batch:
                break
            matrix = await self.embedder.embed_passages([chunk_embedding_text(chunk) for chunk in batch])
            async with self.database.session(write=True) as session:
                still = await queue.hold(session, held)
                held = [job for job in held if job.id in still]
                ours = {job.source_id for job in held}
                rows = [(c.chunk_id, matrix[i]) for i, c in enumerate(batch) if c.source_id in ours]
                # Chunks replaced meanwhile (the source was edited) are skipped by the store.
                await vectors.write_vectors(await session.connection(), self.model.id, rows)
        if held:
            await self._finish(held)

    async def _finish(self, jobs: Sequence[ClaimedJob]) -> None:
        async with self.database.session(write=True) as session:
            held = await queue.hold(session, jobs)
            mine = [job for job in jobs if job.id in held]
            conn = await session.connection()
            complete = [
                job.source_id
                for job in mine
                if await vectors.count_missing_vectors(conn, self.model.id, [job.source_id]) == 0
            ]
            await _set_embedding_state(session, complete, DONE)
            await queue.finish(session, [job.id for job in mine])
            if self.model.state == "building" and await vectors.count_missing_vectors(conn, self.model.id) == 0:
                await vectors.activate_model(conn, self.model.id)
                logger.info("Embedding model %s is complete and now active", self.model.name)

    async def give_up(self, jobs: Sequence[ClaimedJob], reason: str) -> None:
        # The source stays searchable by BM25 and `pending`; the next start queues it again.
        logger.warning("Embedding of %d source(s) abandoned: %s", len(jobs), reason)
        async with self.database.session(write=True) as session:
            held = await queue.hold(session, jobs)
            await queue.finish(session, held)


async def _set_embedding_state(session: AsyncSession, source_ids: Sequence[str], state: str) -> None:
    if source_ids:
        await session.execute(
            update(Source)
            .where(Source.id.in_(list(source_ids)))
            .values(embedding_state=state, updated_at=Source.updated_at)
        )


async def queue_embedding(session: AsyncSession, source_ids: Sequence[str], wake: Callable[[], None] | None) -> None:
    """Mark freshly indexed sources `pending` and queue their `embed` jobs (in the caller's transaction)."""
    await _set_embedding_state(session, source_ids, PENDING)
    await queue.enqueue_many(session, queue.EMBED, source_ids, wake=wake)


async def start_dense_retrieval(database: Database, settings: Settings) -> DenseIndex | None:
    """The configured embedder with its model registered, or None when dense retrieval is off.

    Run at start (server or worker). An embedding server that cannot tell its dimension now (it is down)
    does not stop the start: retrieval runs on BM25 alone until the next start, and the log says so.
    """
    try:
        embedder = await open_embedder(settings)
    except EmbeddingFailed as exc:
        logger.error("Dense retrieval is off until the next start: %s", exc)
        return None
    if embedder is None:
        return None
    try:
        return await prepare_dense_retrieval(database, embedder)
    except BaseException:
        await embedder.aclose()
        raise


async def prepare_dense_retrieval(database: Database, embedder: Embedder) -> DenseIndex:
    """Register the embedder's model and queue every indexed source that lacks its vectors.

    It picks up sources indexed while embedding was off or failing, and, after a change of model, builds
    the new model's vectors beside the old ones. The jobs wait for a worker's next poll. The sources are
    selected in SQL, never bound as a list: a large collection would exceed SQLite's bound-variable limit.
    """
    async with database.session(write=True) as session:
        conn = await session.connection()
        model = await vectors.register_model(conn, embedder.model_name, embedder.dimension)
        missing = _MISSING.bindparams(model_id=model.id).columns(source_id=String).subquery("missing")
        lacking = Source.id.in_(select(missing.c.source_id))
        queued = exists().where(and_(Job.source_id == Source.id, Job.kind == queue.EMBED))
        to_queue = list(await session.scalars(select(Source.id).where(lacking, ~queued).order_by(Source.id)))
        await session.execute(
            update(Source).where(lacking).values(embedding_state=PENDING, updated_at=Source.updated_at)
        )
        for source_id in to_queue:
            await queue.enqueue(session, queue.EMBED, source_id, wake=None, supersede=False)
        await session.execute(
            update(Source)
            .where(Source.state == "vectorized", ~lacking, Source.embedding_state.is_distinct_from(DONE))
            .values(embedding_state=DONE, updated_at=Source.updated_at)
        )
        complete = not await session.scalar(select(exists(select(missing.c.source_id))))
        if model.state == "building" and complete:
            await vectors.activate_model(conn, model.id)
            model = EmbeddingModel(model.id, model.name, model.dimension, "active")
    logger.info(
        "Embedding model %s (%d dimensions, %s): %d source(s) queued for embedding",
        model.name,
        model.dimension,
        model.state,
        len(to_queue),
    )
    return DenseIndex(embedder, model)


# Sources with a chunk that has no vector of the model `:model_id`.
_MISSING = text(
    "SELECT DISTINCT c.source_id FROM rag_chunks c WHERE NOT EXISTS "
    "(SELECT 1 FROM rag_vectors v WHERE v.model_id = :model_id AND v.chunk_id = c.id)"
)
