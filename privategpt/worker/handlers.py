"""Which handler runs which kind of job."""

from __future__ import annotations

from privategpt.config import Settings
from privategpt.db import Database
from privategpt.rag.hybrid import DenseIndex
from privategpt.sources.embedding import EmbeddingHandler
from privategpt.sources.ingestion import IngestionHandler
from privategpt.worker.queue import EMBED, INGEST
from privategpt.worker.runner import JobHandler, Worker


def build_worker(database: Database, settings: Settings, dense: DenseIndex | None = None) -> Worker:
    """A worker for every job kind this server knows; `dense` adds embedding jobs."""
    ingestion = IngestionHandler(database, embed=dense is not None)
    # Ingestion first: a source becomes searchable by BM25 without waiting for any vector.
    handlers: dict[str, JobHandler] = {INGEST: ingestion}
    if dense is not None:
        handlers[EMBED] = EmbeddingHandler(database, dense.embedder, dense.model)
    # One embedding batch at a time: the local model already uses every core it is given.
    worker = Worker(database, settings, handlers, slots={EMBED: 1})
    ingestion.wake = worker.wake
    return worker
