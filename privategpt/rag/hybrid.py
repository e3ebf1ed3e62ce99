"""Hybrid retrieval: BM25 and dense vectors, each inside the caller's access scope, fused into one ranking.

Modes:
* `sparse`  BM25 alone (`privategpt.rag.retrieval`); scores as documented there.
* `dense`   cosine similarity of the query's and the chunks' vectors; the score is the cosine clipped at 0.
* `hybrid`  both lists (`CANDIDATES` each, at least `k`), fused by a convex combination of their scores,
            each min-max normalised over its own list (a chunk absent from a list scores 0 there). See
            `fuse` for the score's meaning and docs/retrieval.md for why this fusion (measured).

Dense retrieval runs only while the configured model is the active one: after a change of model its
vectors are built beside the old ones, which the new model's query vectors cannot be compared with, so
until the switch-over `hybrid` and `dense` fall back to BM25 alone rather than rank with a mismatch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from privategpt.embeddings.base import Embedder, Vectors
from privategpt.rag import vectors
from privategpt.rag.retrieval import DEFAULT_PARAMS, Bm25Params, ScoredChunk
from privategpt.rag.retrieval import retrieve as retrieve_sparse
from privategpt.rag.store import RetrievalScope, store_for
from privategpt.rag.vectors import ChunkToEmbed, EmbeddingModel

RetrievalMode = Literal["sparse", "dense", "hybrid"]
MODES: tuple[RetrievalMode, ...] = ("sparse", "dense", "hybrid")

# Candidates taken from each list before fusion.
CANDIDATES = 100
# Weight of BM25 in the fused score; the rest is the dense side's.
SPARSE_WEIGHT = 0.5


@dataclass(frozen=True)
class DenseIndex:
    """The configured embedder and its model's row: what dense retrieval needs besides the database."""

    embedder: Embedder
    model: EmbeddingModel

    async def is_active(self, conn: AsyncConnection) -> bool:
        """Whether this model's vectors are the ones in service (not still being built after a change)."""
        state = await conn.scalar(text("SELECT state FROM rag_embedding_models WHERE id = :id"), {"id": self.model.id})
        return bool(state == "active")


def chunk_embedding_text(chunk: ChunkToEmbed) -> str:
    """What is embedded for a chunk: its document's name and heading path lead it, as in the lexical index."""
    heading = " > ".join(h for h in chunk.heading_path if h and h != chunk.source_name)
    return "\n".join(part for part in (chunk.source_name, heading, chunk.text) if part)


@dataclass(frozen=True)
class _Hit:
    chunk_id: int
    score: float


def _minmax(scores: np.ndarray) -> np.ndarray:
    if scores.size == 0:
        return scores
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 1e-12:
        return np.ones_like(scores)
    return (scores - low) / (high - low)


def fuse(sparse: Sequence[_Hit], dense: Sequence[_Hit], sparse_weight: float = SPARSE_WEIGHT) -> list[_Hit]:
    """Convex combination of min-max normalised scores, best first (ties by chunk id).

    The fused score is in 0..1: 1.0 for a chunk that tops both lists; a chunk found by one list only
    gets at most that list's weight. It ranks within one query's candidates, so a scenario's
    `similarity_threshold` in hybrid mode keeps the chunks at least that close to the best candidate.
    """
    fused: dict[int, float] = {}
    for hits, weight in ((sparse, sparse_weight), (dense, 1.0 - sparse_weight)):
        if not hits:
            continue
        normalised = _minmax(np.array([h.score for h in hits], dtype=np.float64))
        for hit, value in zip(hits, normalised.tolist(), strict=True):
            fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + weight * value
    return sorted((_Hit(c, s) for c, s in fused.items()), key=lambda h: (-h.score, h.chunk_id))


async def retrieve(
    conn: AsyncConnection,
    query: str,
    scope: RetrievalScope,
    k: int,
    threshold: float = 0.0,
    mode: RetrievalMode = "sparse",
    *,
    dense: DenseIndex | None = None,
    query_vector: Vectors | None = None,
    language: str = "en",
    params: Bm25Params = DEFAULT_PARAMS,
) -> list[ScoredChunk]:
    """The `k` best chunks in `scope` for `query`, best first, each scoring at least `threshold`.

    `dense` is needed for the dense and hybrid modes, which fall back to BM25 without it (or while its
    model is still being built). `query_vector` saves embedding the query again when the caller has it.
    """
    if k <= 0 or scope.is_empty:
        return []
    if mode != "sparse" and (dense is None or not await dense.is_active(conn)):
        mode = "sparse"
    if mode == "sparse":
        return await retrieve_sparse(conn, query, scope, k, threshold, language=language, params=params)
    assert dense is not None
    if query_vector is None:
        query_vector = await dense.embedder.embed_query(query)
    width = max(k, CANDIDATES)
    dense_hits = [
        _Hit(chunk_id, max(0.0, score))
        for chunk_id, score in await vectors.search_dense(conn, dense.model.id, query_vector, scope, width)
    ]
    if mode == "dense":
        ranked = dense_hits
        known: dict[int, ScoredChunk] = {}
    else:
        sparse_chunks = await retrieve_sparse(conn, query, scope, width, 0.0, language=language, params=params)
        known = {c.chunk_id: c for c in sparse_chunks}
        ranked = fuse([_Hit(c.chunk_id, c.score) for c in sparse_chunks], dense_hits)
    top = [h for h in ranked if h.score >= threshold][:k]
    missing = [h.chunk_id for h in top if h.chunk_id not in known]
    if missing:
        # Read under the scope again, as BM25's rows are: a source deleted or regrouped meanwhile drops out.
        for row in await store_for(conn).fetch(conn, scope, missing):
            known[row.chunk_id] = ScoredChunk(
                row.chunk_id, row.source_id, row.source_name, row.text, row.heading_path, 0.0
            )
    return [dataclasses.replace(known[hit.chunk_id], score=hit.score) for hit in top if hit.chunk_id in known]
