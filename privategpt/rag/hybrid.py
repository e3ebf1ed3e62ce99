"""Hybrid retrieval: BM25 and dense vectors, each inside the caller's access scope, fused into one ranking.

Modes:
* `sparse`  BM25 alone (`privategpt.rag.retrieval`); scores as documented there.
* `dense`   cosine similarity of the query's and the chunks' vectors; the score is the cosine clipped at 0.
* `hybrid`  both lists (`CANDIDATES` each, at least `k`), fused by a convex combination of their scores,
            0.4 on BM25 and 0.6 on the dense side, each list's scores first normalised by their own
            distribution (mean ± 3 standard deviations mapped to 0..1; a chunk absent from a list scores 0
            there). See `fuse` for the score's meaning and docs/benchmarks.md for the fusions measured.

Dense retrieval runs only while the configured model is the active one: after a change of model its
vectors are built beside the old ones, which the new model's query vectors cannot be compared with, so
until the switch-over `hybrid` and `dense` fall back to BM25 alone rather than rank with a mismatch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from privategpt.embeddings.base import Embedder, Vectors
from privategpt.rag import vectors
from privategpt.rag.retrieval import DEFAULT_PARAMS, Bm25Params, ScoredChunk, retrieve_sparse, sparse_hits
from privategpt.rag.store import RetrievalScope, store_for
from privategpt.rag.vectors import ChunkToEmbed, EmbeddingModel
from privategpt.reranking import Reranker, RerankFailed

logger = logging.getLogger(__name__)

RetrievalMode = Literal["sparse", "dense", "hybrid"]
MODES: tuple[RetrievalMode, ...] = ("sparse", "dense", "hybrid")

# Candidates taken from each list before fusion.
CANDIDATES = 100
# Weight of BM25 in the fused score; the rest is the dense side's. Chosen by measurement
# (bench/bench_fusion.py, docs/benchmarks.md): with distribution-based normalisation, the one fusion tried
# that beats both lists alone by a margin on SciFact and on XQuAD en, de and es at once.
SPARSE_WEIGHT = 0.4
# Candidates a reranker orders again (at least k); cross-encoders cost a model call per passage.
RERANK_CANDIDATES = 30


@dataclass(frozen=True)
class DenseIndex:
    """The configured embedder and its model's row: what dense retrieval needs besides the database."""

    embedder: Embedder
    model: EmbeddingModel

    async def is_active(self, conn: AsyncConnection) -> bool:
        """Whether this model's vectors are the ones in service (not still being built after a change)."""
        return await self.active_model(conn) is not None

    async def active_model(self, conn: AsyncConnection) -> EmbeddingModel | None:
        """This model's row, as `vectors.start_dense` takes it, if its vectors are the ones in service."""
        model = await vectors.find_model(conn, self.model.id)
        return model if model is not None and model.state == "active" else None


def passage_text(source_name: str, heading_path: Sequence[str], text: str) -> str:
    """What a model reads of a chunk (embedder, reranker): its document's name and heading path lead it."""
    heading = " > ".join(h for h in heading_path if h and h != source_name)
    return "\n".join(part for part in (source_name, heading, text) if part)


def chunk_embedding_text(chunk: ChunkToEmbed) -> str:
    """The text embedded for a chunk."""
    return passage_text(chunk.source_name, chunk.heading_path, chunk.text)


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


def _distribution(scores: np.ndarray) -> np.ndarray:
    """Scores mapped so that their mean - 3 sd is 0 and mean + 3 sd is 1 (distribution-based score fusion):
    unlike min-max, one list's weakest candidate does not fall to 0 nor its best rise to 1 by definition, so a
    list whose best hit stands far above the rest (a confident match) carries more than one with a flat top."""
    if scores.size == 0:
        return scores
    spread = 6.0 * float(scores.std())
    if spread <= 1e-12:
        return np.ones_like(scores)
    return (scores - (float(scores.mean()) - spread / 2)) / spread


@dataclass(frozen=True)
class Fusion:
    """How the sparse and dense lists become one: a convex combination (`sparse_weight` on BM25) of each
    list's scores normalised by `distribution` (mean ± 3 sd to 0..1, the default), `minmax` (min-max over
    the list) or `bm25max` (min-max, but BM25 divided by its best score only); or `rrf`, reciprocal rank
    fusion (1 / (rrf_k + rank)), weighted the same way."""

    method: Literal["distribution", "minmax", "bm25max", "rrf"] = "distribution"
    sparse_weight: float = SPARSE_WEIGHT
    rrf_k: int = 60


DEFAULT_FUSION = Fusion()


def _normalised(hits: Sequence[_Hit], fusion: Fusion, *, is_sparse: bool) -> np.ndarray:
    scores = np.array([h.score for h in hits], dtype=np.float64)
    if fusion.method == "distribution":
        return _distribution(scores)
    if fusion.method == "bm25max" and is_sparse:
        return scores / (float(scores.max()) or 1.0)
    if fusion.method == "rrf":
        return (fusion.rrf_k + 1.0) / (fusion.rrf_k + np.arange(1, len(hits) + 1, dtype=np.float64))
    return _minmax(scores)


def fuse(sparse: Sequence[_Hit], dense: Sequence[_Hit], fusion: Fusion = DEFAULT_FUSION) -> list[_Hit]:
    """One ranking from both lists, best first (ties by chunk id).

    The fused score is reported as a share of the best candidate's: 1.0 for the best chunk, 0 at worst
    (the few chunks that normalise below 0 are clipped there). It ranks within one query's candidates, so
    a scenario's `similarity_threshold` in hybrid mode keeps the chunks whose fused score is at least that
    share of the best one's.
    """
    fused: dict[int, float] = {}
    weights = (fusion.sparse_weight, 1.0 - fusion.sparse_weight)
    for hits, weight in zip((sparse, dense), weights, strict=True):
        if not hits:
            continue
        for hit, value in zip(hits, _normalised(hits, fusion, is_sparse=hits is sparse).tolist(), strict=True):
            fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + weight * value
    best = max(fused.values(), default=0.0)
    scale = 1.0 / best if best > 1e-12 else 0.0
    ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))
    return [_Hit(chunk_id, min(1.0, max(0.0, score * scale))) for chunk_id, score in ranked]


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
    reranker: Reranker | None = None,
    language: str = "en",
    params: Bm25Params = DEFAULT_PARAMS,
    fusion: Fusion = DEFAULT_FUSION,
) -> list[ScoredChunk]:
    """The `k` best chunks in `scope` for `query`, best first, each scoring at least `threshold`.

    `dense` is needed for the dense and hybrid modes, which fall back to BM25 without it (or while its
    model is still being built). `query_vector` saves embedding the query again when the caller has it.
    With a `reranker`, the best `RERANK_CANDIDATES` of the mode's ranking are ordered again by it, and
    its score (0..1) is the one reported and held against `threshold`.
    """
    if k <= 0 or scope.is_empty:
        return []
    active = None if mode == "sparse" or dense is None else await dense.active_model(conn)
    if active is None:
        mode = "sparse"
    if mode == "sparse" and reranker is None:
        return await retrieve_sparse(conn, query, scope, k, threshold, language=language, params=params)
    width = max(k, CANDIDATES)
    known: dict[int, ScoredChunk] = {}
    if mode == "sparse":
        sparse_chunks = await retrieve_sparse(conn, query, scope, width, 0.0, language=language, params=params)
        known = {c.chunk_id: c for c in sparse_chunks}
        ranked = [_Hit(c.chunk_id, c.score) for c in sparse_chunks]
    else:
        assert dense is not None and active is not None
        if query_vector is None:
            query_vector = await dense.embedder.embed_query(query)
        # The dense search's arithmetic (SQLite: the in-process matrix) runs in a worker thread while
        # BM25 uses the connection; only the final chunks' texts are read.
        pending = await vectors.start_dense(conn, active, query_vector, scope, width)
        sparse = []
        if mode == "hybrid":
            sparse = [
                _Hit(c, s)
                for c, s in await sparse_hits(conn, query, scope, width, 0.0, language=language, params=params)
            ]
        dense_hits = [_Hit(chunk_id, max(0.0, score)) for chunk_id, score in await pending.result(conn)]
        ranked = dense_hits if mode == "dense" else fuse(sparse, dense_hits, fusion)
    if reranker is not None:
        ranked = ranked[: max(k, RERANK_CANDIDATES)]
        await _read_chunks(conn, scope, known, ranked)
        ranked = await _rerank(reranker, query, [h for h in ranked if h.chunk_id in known], known)
    top = [h for h in ranked if h.score >= threshold][:k]
    await _read_chunks(conn, scope, known, top)
    return [dataclasses.replace(known[hit.chunk_id], score=hit.score) for hit in top if hit.chunk_id in known]


async def _read_chunks(
    conn: AsyncConnection, scope: RetrievalScope, known: dict[int, ScoredChunk], hits: Sequence[_Hit]
) -> None:
    """Add the chunks of `hits` not read yet to `known`, read under the scope again as BM25's rows are:
    a source deleted or regrouped since its vectors were searched drops out."""
    missing = [h.chunk_id for h in hits if h.chunk_id not in known]
    if missing:
        for row in await store_for(conn).fetch(conn, scope, missing):
            known[row.chunk_id] = ScoredChunk(
                row.chunk_id, row.source_id, row.source_name, row.text, row.heading_path, 0.0
            )


async def _rerank(reranker: Reranker, query: str, hits: list[_Hit], known: dict[int, ScoredChunk]) -> list[_Hit]:
    """`hits` ordered by the reranker; unchanged when it fails (retrieval must not fail with it)."""
    passages = [passage_text(c.source_name, c.heading_path, c.text) for c in (known[h.chunk_id] for h in hits)]
    try:
        scores = await reranker.rerank(query, passages)
    except RerankFailed as exc:
        logger.warning("Reranking skipped: %s", exc)
        return hits
    reranked = [_Hit(h.chunk_id, s) for h, s in zip(hits, scores, strict=True)]
    # A stable sort: passages the reranker scores alike keep their order from the first ranking.
    return sorted(reranked, key=lambda h: -h.score)
