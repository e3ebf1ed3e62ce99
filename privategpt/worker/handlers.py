"""Which handler runs which kind of job."""

from __future__ import annotations

from privategpt.config import Settings
from privategpt.db import Database
from privategpt.embeddings.local import GATE_MAX_WAIT_S, LocalEmbedder
from privategpt.rag.hybrid import DenseIndex
from privategpt.sources.embedding import EmbeddingHandler
from privategpt.sources.ingestion import IngestionHandler
from privategpt.worker.queue import EMBED, INGEST
from privategpt.worker.runner import JobHandler, Worker

# Embedding resumes once no ingestion batch has run for this long (posts arriving one after another keep
# ingestion busy; the gaps between their batches are much shorter), or after GATE_MAX_WAIT_S, so that
# dense vectors still progress under a never-ending stream of new sources.
INGEST_QUIET_S = 0.5


def build_worker(database: Database, settings: Settings, dense: DenseIndex | None = None) -> Worker:
    """A worker for every job kind this server knows; `dense` adds embedding jobs."""
    ingestion = IngestionHandler(database, embed=dense is not None)
    # Ingestion first: a source becomes searchable by BM25 without waiting for any vector.
    handlers: dict[str, JobHandler] = {INGEST: ingestion}
    embedding = EmbeddingHandler(database, dense.embedder, dense.model) if dense is not None else None
    if embedding is not None:
        handlers[EMBED] = embedding
    # One embedding batch at a time: the local model already uses every core it is given.
    worker = Worker(database, settings, handlers, slots={EMBED: 1})
    ingestion.wake = worker.wake
    if embedding is not None:
        # Dense vectors wait while this worker indexes sources: they would slow down what makes sources
        # searchable (measured: docs/benchmarks.md, issue 4 ingestion). The handler waits before each step
        # (reading chunks, embedding them, writing vectors); the local model's thread also before each of
        # its jobs, since one step of 32 passages takes it ~30 s of CPU.
        embedding.pause = lambda: worker.settled(INGEST, INGEST_QUIET_S, GATE_MAX_WAIT_S)
        if isinstance(embedding.embedder, LocalEmbedder):
            embedding.embedder.passage_gate = worker.idle_gate(INGEST, INGEST_QUIET_S)
    return worker
