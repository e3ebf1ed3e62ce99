"""Retrieval core: text analysis, Markdown chunking, a BM25 index next to the permissions, evaluation.

Nothing in this package knows about HTTP or the ORM: it works on an `AsyncConnection` and plain data,
so the API, the ingestion worker and the evaluation command all share one implementation.
"""

from __future__ import annotations

from privategpt.rag.analyzer import Analyzer, get_analyzer, supported_languages
from privategpt.rag.chunking import Chunk, ChunkingOptions, chunk_markdown
from privategpt.rag.hybrid import DenseIndex, RetrievalMode, retrieve
from privategpt.rag.retrieval import (
    Bm25Params,
    PreparedSource,
    RetrievalScope,
    ScoredChunk,
    delete_source_chunks,
    index_prepared,
    index_prepared_many,
    index_source,
    prepare_source,
    retrieve_sparse,
)
from privategpt.rag.schema import postgres_ddl, postgres_drop, sqlite_ddl, sqlite_drop

__all__ = [
    "Analyzer",
    "Bm25Params",
    "Chunk",
    "ChunkingOptions",
    "DenseIndex",
    "PreparedSource",
    "RetrievalMode",
    "RetrievalScope",
    "ScoredChunk",
    "chunk_markdown",
    "delete_source_chunks",
    "get_analyzer",
    "index_prepared",
    "index_prepared_many",
    "index_source",
    "postgres_ddl",
    "postgres_drop",
    "prepare_source",
    "retrieve",
    "retrieve_sparse",
    "sqlite_ddl",
    "sqlite_drop",
    "supported_languages",
]
