"""The retrieval entry point: query + access scope -> the k best chunks with scores in 0..1.

BM25 (Lucene's variant: idf = ln(1 + (N - df + 0.5) / (df + 0.5))) over chunks, each chunk indexed with
its document name and heading path. Scores are normalised by the query's own maximum: a chunk's BM25
divided by sum over query terms of idf * (k1 + 1), the value a chunk would reach if every query term
occurred infinitely often in it. So 1.0 is unreachable, a chunk of average length containing every query
term once scores 1 / (k1 + 1) (0.53 with the default k1), and the score of a chunk does not depend on what
else the caller may see. The same integers feed the same Python arithmetic on both databases, so a
scenario's `similarity_threshold` means exactly the same on SQLite and PostgreSQL.

How a query stays fast at 100,000+ chunks (see docs/retrieval.md):
* Small scopes (a few thousand visible chunks) are scored exhaustively: the visible chunks are listed
  through `source_groups` and scored from their term vectors.
* Large scopes, in one statement: each query term's best postings by impact are read from the term
  index alone (a budget shared between the terms: rare terms whole, common terms their best postings,
  all divided by the share of sources in scope), summed per chunk with integer query weights, and the
  best few hundred chunks of that sum are joined to their rows under the access filter. Those visible
  candidates are scored exactly on all query terms from their term vectors. If fewer than k of them are
  visible, the older plan runs instead: each term's postings walked inside the access filter, which
  counts visible postings only. Only the candidate set is approximate: a chunk that is in no term's best
  postings, or whose impact sum is not among the best, is not considered (measured in docs/retrieval.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from privategpt.rag.analyzer import get_analyzer, normalize_language, query_terms
from privategpt.rag.chunking import ChunkingOptions, chunk_markdown, index_text
from privategpt.rag.languages import assign_languages, ready_for
from privategpt.rag.sparse_index import RECORDS, QueryTerm
from privategpt.rag.sparse_index import search as search_memory
from privategpt.rag.store import (
    RECORD_SIZE,
    Candidate,
    CorpusStats,
    PreparedChunk,
    PreparedSource,
    RetrievalScope,
    store_for,
)

__all__ = [
    "Bm25Params",
    "PreparedChunk",
    "PreparedSource",
    "RetrievalScope",
    "ScoredChunk",
    "delete_source_chunks",
    "index_prepared",
    "index_prepared_many",
    "index_source",
    "prepare_source",
    "retrieve_sparse",
    "sparse_hits",
]


@dataclass(frozen=True)
class Bm25Params:
    """BM25 parameters and the query planner's budgets."""

    k1: float = 0.9
    b: float = 0.4
    # Up to this many visible chunks, score every one of them (exact and cheap).
    exhaustive_scope: int = 3000
    # Large scopes, first plan: postings read from the term index alone (no chunk row, no access check),
    # shared between terms, and the best of them by summed impact that are then checked and scored
    # exactly; both divided by the share of sources the caller may see.
    impact_budget: int = 4000
    min_impact_postings_per_term: int = 200
    rescore_pool: int = 300
    pool_per_k: int = 4
    # Score every chunk matching a query term from this process's in-memory postings
    # (`privategpt.rag.sparse_index`, exact), visibility read in SQL per source (narrow scopes: their
    # sources listed; wide ones: the best candidates' sources checked). False (or a database without
    # the chunk log): the SQL plans below.
    memory_postings: bool = True
    # False: large scopes use the access-filtered walk alone (the earlier plan, for comparisons).
    impact_walk: bool = True
    # Large scopes, fallback when that pool held fewer than k visible chunks: candidate postings read
    # inside the access filter, shared between terms (scaled up for large k).
    posting_budget: int = 2000
    min_postings_per_term: int = 100


DEFAULT_PARAMS = Bm25Params()


@dataclass(frozen=True)
class ScoredChunk:
    """One retrieved chunk; `score` is normalised BM25 in 0..1 (see the module docstring)."""

    chunk_id: int
    source_id: str
    source_name: str
    text: str
    heading_path: tuple[str, ...]
    score: float


# -- ingestion ------------------------------------------------------------------------------------


def prepare_source(
    name: str, markdown: str, language: str = "en", options: ChunkingOptions | None = None
) -> PreparedSource:
    """Chunk and analyse a document (CPU only; run it with asyncio.to_thread for large documents).

    Each chunk is analysed in its detected language; `language` is assumed where nothing can be told.
    """
    default = normalize_language(language)
    pieces = list(chunk_markdown(markdown, options))
    chunk_languages = assign_languages([p.text for p in pieces], default)
    chunks = []
    for chunk, chunk_language in zip(pieces, chunk_languages, strict=True):
        terms = get_analyzer(chunk_language).term_frequencies(index_text(name, chunk))
        if not terms:
            continue
        chunks.append(
            PreparedChunk(
                ordinal=chunk.ordinal,
                heading_path=chunk.heading_path,
                text=chunk.text,
                length=sum(terms.values()),
                terms=dict(terms),
                language=chunk_language,
            )
        )
    main = max(sorted(set(chunk_languages)), key=chunk_languages.count) if chunk_languages else default
    return PreparedSource(language=main, chunks=tuple(chunks))


async def index_prepared(
    conn: AsyncConnection, source_id: str, prepared: PreparedSource, params: Bm25Params = DEFAULT_PARAMS
) -> int:
    """Replace a source's chunks in the index (in the caller's transaction); returns the chunk count."""
    await index_prepared_many(conn, [(source_id, prepared)], params)
    return len(prepared.chunks)


async def index_prepared_many(
    conn: AsyncConnection,
    items: Sequence[tuple[str, PreparedSource]],
    params: Bm25Params = DEFAULT_PARAMS,
) -> None:
    """Replace the chunks of several sources at once (bulk loads, evaluation)."""
    await store_for(conn).write(conn, items, params.k1, params.b)


async def index_source(
    conn: AsyncConnection,
    source_id: str,
    name: str,
    markdown: str,
    language: str = "en",
    options: ChunkingOptions | None = None,
    params: Bm25Params = DEFAULT_PARAMS,
) -> int:
    """Chunk, analyse (off the event loop) and index a source, replacing earlier chunks."""
    prepared = await asyncio.to_thread(prepare_source, name, markdown, language, options)
    return await index_prepared(conn, source_id, prepared, params)


async def delete_source_chunks(conn: AsyncConnection, source_id: str) -> None:
    """Remove a source's chunks from the index (deleting the source row does this too, by cascade)."""
    await store_for(conn).delete(conn, [source_id])


# -- retrieval ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _QueryTerm:
    term_id: int
    df: int
    weight: float  # query term frequency * idf


def _idf(n_chunks: int, df: int) -> float:
    return math.log(1.0 + (n_chunks - df + 0.5) / (df + 0.5))


def _plan(terms: Sequence[_QueryTerm], budget: int, min_per_term: int) -> list[tuple[int, int]]:
    """Per-term candidate limits: rarest terms first and whole, the rest share what is left."""
    plan: list[tuple[int, int]] = []
    remaining = budget
    ordered = sorted(terms, key=lambda t: (t.df, t.term_id))
    for i, term in enumerate(ordered):
        quota = max(min_per_term, remaining // (len(ordered) - i))
        limit = min(term.df, quota)
        plan.append((term.term_id, limit))
        remaining = max(0, remaining - limit)
    return plan


# Query weights become integers for the impact walk, so both databases sum them exactly.
_WEIGHT_SCALE = 1000
# Floor of the share estimate: scopes this narrow are mostly exhaustive already (3,000 chunks), and
# the walk must not grow without bound on a corpus of many small sources.
_MIN_SHARE = 0.05


def _score(
    terms: Sequence[_QueryTerm], candidates: Sequence[Candidate], stats: CorpusStats, params: Bm25Params
) -> tuple[np.ndarray, np.ndarray]:
    """Exact BM25 of each distinct candidate over all query terms, read from its term vector.

    Returns chunk ids and scores as arrays, vectorised: a query at 100,000 chunks scores a few
    thousand candidates, a few hundred thousand term records.
    """
    unique: dict[int, tuple[int, bytes]] = {}
    for chunk_id, length, vector in candidates:
        unique.setdefault(chunk_id, (length, vector))
    ids = np.fromiter(unique, dtype=np.int64, count=len(unique))
    if not unique:
        return ids, np.zeros(0)
    lengths = np.fromiter((v[0] for v in unique.values()), dtype=np.float64, count=len(unique))
    vectors = [v[1] for v in unique.values()]
    # All candidates' term vectors in one array, each record tagged with its candidate's position.
    records = np.frombuffer(b"".join(vectors), dtype=RECORDS)
    owner = np.repeat(np.arange(len(vectors)), [len(v) // RECORD_SIZE for v in vectors])
    record_terms = records["term"].astype(np.uint32)
    record_tfs = records["tf"].astype(np.float64)
    k1, b = params.k1, params.b
    norm = k1 * (1.0 - b + b * lengths / (stats.avg_length or 1.0))
    scores = np.zeros(len(vectors))
    # One pass per query term (a handful) beats a generic set-membership test over all records.
    for term in sorted(terms, key=lambda t: t.term_id):
        hit = np.flatnonzero(record_terms == term.term_id)
        if hit.size:
            who = owner[hit]
            tf = record_tfs[hit]
            scores[who] += term.weight * tf * (k1 + 1.0) / (tf + norm[who])
    return ids, scores


# A scope's size (capped) and share of the sources, remembered per process for a few seconds: they only
# pick the plan and size the impact walk, every plan reads under the access filter and falls back to the
# access walk when short, and at 100,000 chunks the two counts cost 5 ms of a wide scope's ~20.
SCOPE_STATS_TTL_S = 5.0
_SCOPE_STATS: dict[tuple[str, str, frozenset[int], bool, int], tuple[float, float]] = {}


async def _scope_stat(
    conn: AsyncConnection, scope: RetrievalScope, what: str, cap: int, read: Callable[[], Awaitable[float]]
) -> float:
    key = (conn.engine.url.render_as_string(hide_password=True), what, scope.group_ids, scope.include_public, cap)
    now = time.monotonic()
    cached = _SCOPE_STATS.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    value = await read()
    if len(_SCOPE_STATS) > 1000:
        _SCOPE_STATS.clear()
    _SCOPE_STATS[key] = (now + SCOPE_STATS_TTL_S, value)
    return value


async def _scope_size(conn: AsyncConnection, scope: RetrievalScope, cap: int) -> float:
    """`count_visible` up to `cap`, remembered for SCOPE_STATS_TTL_S."""

    async def read() -> float:
        return float(await store_for(conn).count_visible(conn, scope, cap))

    return await _scope_stat(conn, scope, "size", cap, read)


async def _scope_share(conn: AsyncConnection, scope: RetrievalScope) -> float:
    """`visible_share`, remembered for SCOPE_STATS_TTL_S."""
    return await _scope_stat(conn, scope, "share", 0, lambda: store_for(conn).visible_share(conn, scope))


async def _impact_pool(
    conn: AsyncConnection, scope: RetrievalScope, terms: Sequence[_QueryTerm], k: int, params: Bm25Params
) -> list[Candidate]:
    """Large scopes: the visible chunks among those with the best summed impacts, one statement.

    The walk is not restricted to the scope (that costs a chunk row and two probes per posting), so it
    reads 1/share times as far to find about as many visible chunks; the pool then keeps only visible
    ones, inside the same statement.
    """
    share = max(await _scope_share(conn, scope), _MIN_SHARE)
    wanted = max(params.rescore_pool, params.pool_per_k * k)
    budget = math.ceil(max(params.impact_budget, 4 * wanted) / share)
    walk = _plan(terms, budget, params.min_impact_postings_per_term)
    weights = {t.term_id: max(1, round(t.weight * _WEIGHT_SCALE)) for t in terms}
    plan = [(term_id, limit, weights[term_id]) for term_id, limit in walk]
    return await store_for(conn).impact_candidates(conn, scope, plan, math.ceil(wanted / share))


async def retrieve_sparse(
    conn: AsyncConnection,
    query: str,
    scope: RetrievalScope,
    k: int,
    threshold: float = 0.0,
    *,
    language: str = "en",
    params: Bm25Params = DEFAULT_PARAMS,
) -> list[ScoredChunk]:
    """BM25 alone: the `k` best chunks in `scope` for `query`, best first, each scoring at least `threshold`.

    `privategpt.rag.hybrid.retrieve`, the entry point of every caller, runs it in every mode.
    """
    top = await sparse_hits(conn, query, scope, k, threshold, language=language, params=params)
    # The rows are read again under the scope: on PostgreSQL each statement sees the latest commit,
    # so a source deleted or regrouped meanwhile is dropped here rather than returned.
    rows = {row.chunk_id: row for row in await store_for(conn).fetch(conn, scope, [c for c, _ in top])}
    return [
        ScoredChunk(c, rows[c].source_id, rows[c].source_name, rows[c].text, rows[c].heading_path, score)
        for c, score in top
        if c in rows
    ]


async def sparse_hits(
    conn: AsyncConnection,
    query: str,
    scope: RetrievalScope,
    k: int,
    threshold: float = 0.0,
    *,
    language: str = "en",
    params: Bm25Params = DEFAULT_PARAMS,
) -> list[tuple[int, float]]:
    """`retrieve_sparse`'s ranking without reading the chunks: (chunk id, score), best first. Every
    candidate was in scope when read; whoever shows the chunks reads them again under the scope."""
    if k <= 0 or scope.is_empty:
        return []
    if ready_for(query):
        query_tf = query_terms(query, language)
    else:  # The process's first such query loads models: seconds that must not block the event loop.
        query_tf = await asyncio.to_thread(query_terms, query, language)
    if not query_tf:
        return []
    store = store_for(conn)
    stats, found = await store.lookup_terms(conn, list(query_tf))
    if not found or stats.n_chunks <= 0:
        return []
    terms = [
        _QueryTerm(s.term_id, s.df, query_tf[term] * _idf(stats.n_chunks, s.df)) for term, s in sorted(found.items())
    ]
    max_score = sum(t.weight for t in terms) * (params.k1 + 1.0)

    in_memory = None
    if params.memory_postings:
        share = await _scope_share(conn, scope)
        weights = [QueryTerm(t.term_id, t.weight) for t in terms]
        in_memory = await search_memory(conn, scope, weights, stats.avg_length, k, params.k1, params.b, share)
    if in_memory is not None:
        ids, scores = in_memory
    else:
        if await _scope_size(conn, scope, params.exhaustive_scope) <= params.exhaustive_scope:
            candidates = await store.chunks_in_scope(conn, scope)
        else:
            candidates = await _impact_pool(conn, scope, terms, k, params) if params.impact_walk else []
            if len(candidates) < k:
                # Too few of the best postings were visible (a scope much narrower than estimated, or
                # matches are rare): walk inside the access filter, which counts visible postings only.
                plan = _plan(terms, max(params.posting_budget, 3 * k), params.min_postings_per_term)
                candidates = await store.top_candidates(conn, scope, plan)
        ids, scores = _score(terms, candidates, stats, params)

    # Best score first, ties by chunk id, so both databases return the same order.
    order = np.lexsort((ids, -scores))[:k]
    return [
        (chunk_id, score / max_score)
        for chunk_id, score in zip(ids[order].tolist(), scores[order].tolist(), strict=True)
        if score > 0 and score / max_score >= threshold
    ]
