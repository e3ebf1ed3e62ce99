"""Offline evaluation on a BEIR-format directory through the real retrieval core.

Each corpus document becomes a public, vectorized source (title as name, text as Markdown content), is
chunked and indexed by the same code as ingestion, into a scratch database created for the run; every
query goes through `retrieve` (`privategpt.rag.hybrid`), in each mode asked for. Dense modes embed every
chunk with the configured embedder, exactly as the `embed` job does; the vectors are cached on disk by
model and text (`EmbeddingCache`), since the bundled CPU model needs minutes per thousand passages.
A document's rank is that of its best chunk. Metrics follow trec_eval
(as used by BEIR): nDCG@10 with the judged grade as gain, Recall@100 over documents judged relevant
(grade > 0); queries without a relevant judgment are skipped.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from privategpt.embeddings.base import Embedder, Vectors
from privategpt.rag import vectors
from privategpt.rag.chunking import ChunkingOptions
from privategpt.rag.embedding_cache import EmbeddingCache
from privategpt.rag.hybrid import (
    CANDIDATES,
    DEFAULT_FUSION,
    DenseIndex,
    Fusion,
    RetrievalMode,
    chunk_embedding_text,
    retrieve,
)
from privategpt.rag.retrieval import (
    DEFAULT_PARAMS,
    Bm25Params,
    PreparedSource,
    RetrievalScope,
    index_prepared_many,
    prepare_source,
)
from privategpt.rag.schema import ddl_for, standalone_host_ddl
from privategpt.rag.vector_schema import vector_ddl_for
from privategpt.reranking import Reranker

# The retrieval modes, and hybrid retrieval reranked by the configured rerank server.
EvalMode = Literal["sparse", "dense", "hybrid", "hybrid-rerank"]
EVAL_MODES: tuple[EvalMode, ...] = ("sparse", "dense", "hybrid", "hybrid-rerank")

PUBLIC = RetrievalScope(group_ids=frozenset(), include_public=True)
# Chunks retrieved per query for Recall@100: enough to rank 100 distinct documents.
_CHUNKS_PER_QUERY = 300
# Chunks retrieved per query for nDCG@10: the candidate depth of a chat or a search asking for up to
# `CANDIDATES` chunks, so that the ranking measured is the one they get (hybrid fusion normalises over
# the candidate lists, whose depth is max(k, CANDIDATES)).
_RANKED_PER_QUERY = CANDIDATES
_WRITE_BATCH = 500


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR-format dataset: documents (title, text), queries and graded judgments."""

    name: str
    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation run and what it took."""

    dataset: str
    backend: str
    mode: str
    documents: int
    chunks: int
    queries: int
    ndcg_at_10: float
    recall_at_100: float
    index_seconds: float
    query_seconds: float
    per_query_ndcg: dict[str, float] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        """One human-readable line, for the CLI."""
        return (
            f"{self.dataset} [{self.backend}, {self.mode}] nDCG@10 {self.ndcg_at_10:.4f}  "
            f"Recall@100 {self.recall_at_100:.4f}  ({self.documents} documents, {self.chunks} chunks, "
            f"{self.queries} queries; indexed in {self.index_seconds:.1f} s, "
            f"{1000 * self.query_seconds / max(1, self.queries):.1f} ms/query)"
        )

    def as_dict(self) -> dict[str, Any]:
        """The result without per-query details, for JSON output."""
        return {k: v for k, v in self.__dict__.items() if k != "per_query_ndcg"}


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _first_existing(directory: Path, names: list[str]) -> Path:
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"{directory}: none of {', '.join(names)}")


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def load_beir(directory: str | os.PathLike[str]) -> BeirDataset:
    """Read corpus.jsonl[.gz], queries.test.jsonl or queries.jsonl, and qrels/test.tsv."""
    root = Path(directory)
    corpus = {
        str(d["_id"]): (str(d.get("title") or ""), str(d.get("text") or ""))
        for d in _jsonl(_first_existing(root, ["corpus.jsonl", "corpus.jsonl.gz"]))
    }
    queries_path = _first_existing(
        root, ["queries.test.jsonl", "queries.jsonl", "queries.test.jsonl.gz", "queries.jsonl.gz"]
    )
    queries = {str(q["_id"]): str(q["text"]) for q in _jsonl(queries_path)}
    qrels: dict[str, dict[str, int]] = {}
    with _open_text(_first_existing(root / "qrels", ["test.tsv", "test.tsv.gz"])) as handle:
        for i, line in enumerate(handle):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            if len(parts) >= 3:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[-1])
    name = root.name if root.name not in ("en", "de", "es") else f"{root.parent.name}/{root.name}"
    return BeirDataset(name=name, corpus=corpus, queries=queries, qrels=qrels)


def ndcg_at(ranked: list[str], judged: dict[str, int], cutoff: int = 10) -> float:
    """trec_eval's ndcg_cut: gain = judged grade, discount log2(rank + 1)."""
    dcg = sum(judged.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:cutoff]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:cutoff]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], judged: dict[str, int], cutoff: int = 100) -> float:
    """Share of the documents judged relevant that appear in the top `cutoff`."""
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant & set(ranked[:cutoff])) / len(relevant) if relevant else 0.0


@asynccontextmanager
async def scratch_engine(database_url: str | None = None) -> AsyncIterator[AsyncEngine]:
    """A fresh database with the retrieval schema: a temporary SQLite file, or a new PostgreSQL database
    created on the server of `database_url` and dropped afterwards."""
    if database_url is None or database_url.startswith("sqlite"):
        with tempfile.TemporaryDirectory(prefix="pgpt-eval-") as tmp:
            engine = create_async_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'eval.db'}")
            try:
                async with engine.begin() as conn:
                    await _create_schema(conn)
                yield engine
            finally:
                await engine.dispose()
        return
    url = make_url(database_url).set(drivername="postgresql+asyncpg")
    name = f"pgpt_eval_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine = create_async_engine(url.set(database=name))
        try:
            async with engine.begin() as conn:
                await _create_schema(conn)
            yield engine
        finally:
            await engine.dispose()
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def _create_schema(conn: AsyncConnection) -> None:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
    for statement in [*standalone_host_ddl(dialect), *ddl_for(dialect), *vector_ddl_for(dialect)]:
        await conn.exec_driver_sql(statement)


def _prepare_batch(
    batch: list[tuple[str, tuple[str, str]]], start: int, language: str, options: ChunkingOptions | None
) -> list[tuple[str, PreparedSource]]:
    # Untitled documents (XQuAD) get no name rather than their opaque id in the index.
    return [
        (f"d{start + i}", prepare_source(title, body, language, options)) for i, (_, (title, body)) in enumerate(batch)
    ]


async def load_corpus(
    engine: AsyncEngine,
    corpus: dict[str, tuple[str, str]],
    *,
    language: str = "en",
    options: ChunkingOptions | None = None,
    params: Bm25Params = DEFAULT_PARAMS,
) -> tuple[dict[str, str], int]:
    """Insert every document as a public vectorized source and index it; returns source->doc ids and
    the number of chunks."""
    doc_of_source: dict[str, str] = {}
    chunks = 0
    items = list(corpus.items())
    for start in range(0, len(items), _WRITE_BATCH):
        batch = items[start : start + _WRITE_BATCH]
        prepared = await asyncio.to_thread(_prepare_batch, batch, start, language, options)
        rows = [
            {"id": f"d{start + i}", "name": title[:255], "content": body} for i, (_, (title, body)) in enumerate(batch)
        ]
        doc_of_source.update((f"d{start + i}", doc_id) for i, (doc_id, _) in enumerate(batch))
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO sources (id, name, content, is_public, state) "
                    "VALUES (:id, :name, :content, TRUE, 'vectorized')"
                ),
                rows,
            )
            await index_prepared_many(conn, prepared, params)
        chunks += sum(len(p.chunks) for _, p in prepared)
    # Fresh planner statistics, as autovacuum (PostgreSQL) or `PRAGMA optimize` (SQLite) keep them.
    async with engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")
    return doc_of_source, chunks


async def load_vectors(engine: AsyncEngine, embedder: Embedder, *, batch: int = 256) -> DenseIndex:
    """Embed every chunk of the scratch index with `embedder` and store the vectors, as the `embed` job does."""
    async with engine.begin() as conn:
        model = await vectors.register_model(conn, embedder.model_name, embedder.dimension)
    while True:
        async with engine.connect() as conn:
            todo = await vectors.chunks_missing_vectors(conn, model.id, limit=batch)
        if not todo:
            break
        matrix = await embedder.embed_passages([chunk_embedding_text(c) for c in todo])
        async with engine.begin() as conn:
            await vectors.write_vectors(conn, model.id, [(c.chunk_id, matrix[i]) for i, c in enumerate(todo)])
    async with engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")
    return DenseIndex(embedder, model)


async def evaluate_modes(
    dataset_dir: str | os.PathLike[str],
    database_url: str | None = None,
    *,
    modes: Sequence[EvalMode] = ("sparse",),
    embedder: Embedder | None = None,
    reranker: Reranker | None = None,
    language: str = "en",
    params: Bm25Params = DEFAULT_PARAMS,
    options: ChunkingOptions | None = None,
    fusions: Sequence[Fusion] = (DEFAULT_FUSION,),
) -> list[EvalResult]:
    """Index a BEIR directory into a scratch database once and measure nDCG@10 and Recall@100 per mode
    (the hybrid modes once per fusion in `fusions`)."""
    if embedder is None and any(mode != "sparse" for mode in modes):
        raise ValueError("dense and hybrid modes need an embedding model (PGPT_EMBEDDING_BACKEND)")
    if reranker is None and "hybrid-rerank" in modes:
        raise ValueError("the hybrid-rerank mode needs a rerank server (PGPT_RERANK_BASE_URL)")
    dataset = await asyncio.to_thread(load_beir, dataset_dir)
    results: list[EvalResult] = []
    async with scratch_engine(database_url) as engine:
        started = time.perf_counter()
        doc_of_source, n_chunks = await load_corpus(
            engine, dataset.corpus, language=language, options=options, params=params
        )
        index_seconds = time.perf_counter() - started
        dense: DenseIndex | None = None
        embed_seconds = 0.0
        if embedder is not None and any(mode != "sparse" for mode in modes):
            started = time.perf_counter()
            dense = await load_vectors(engine, embedder)
            embed_seconds = time.perf_counter() - started
        judged_queries = [q for q in dataset.queries if any(g > 0 for g in dataset.qrels.get(q, {}).values())]
        query_vectors: dict[str, Vectors] = {}
        if dense is not None:
            texts = [dataset.queries[q] for q in judged_queries]
            matrix = await _embed_queries(dense.embedder, texts)
            query_vectors = {q: matrix[i] for i, q in enumerate(judged_queries)}
        runs = [(mode, fusion) for mode in modes for fusion in (fusions if mode.startswith("hybrid") else fusions[:1])]
        for mode, fusion in runs:
            ndcg: dict[str, float] = {}
            recall: dict[str, float] = {}
            started = time.perf_counter()
            async with engine.connect() as conn:
                for query_id in judged_queries:
                    for depth in (_RANKED_PER_QUERY, _CHUNKS_PER_QUERY):
                        # The reranker only reorders the first RERANK_CANDIDATES chunks, which leaves the
                        # set of the first 100 documents as it is: the deeper call for recall goes without.
                        rerank = mode == "hybrid-rerank" and depth == _RANKED_PER_QUERY
                        hits = await retrieve(
                            conn, dataset.queries[query_id], PUBLIC, depth, 0.0,
                            "hybrid" if mode == "hybrid-rerank" else mode, dense=dense,
                            query_vector=query_vectors.get(query_id), reranker=reranker if rerank else None,
                            language=language, params=params, fusion=fusion,
                        )  # fmt: skip
                        ranked = list(dict.fromkeys(doc_of_source[h.source_id] for h in hits))
                        if depth == _RANKED_PER_QUERY:
                            ndcg[query_id] = ndcg_at(ranked, dataset.qrels[query_id])
                        else:
                            recall[query_id] = recall_at(ranked, dataset.qrels[query_id])
            query_seconds = time.perf_counter() - started
            n = max(1, len(judged_queries))
            label = mode if len(fusions) == 1 or not mode.startswith("hybrid") else f"{mode} {_describe(fusion)}"
            results.append(
                EvalResult(
                    dataset=dataset.name,
                    backend=engine.dialect.name,
                    mode=label,
                    documents=len(dataset.corpus),
                    chunks=n_chunks,
                    queries=len(judged_queries),
                    ndcg_at_10=sum(ndcg.values()) / n,
                    recall_at_100=sum(recall.values()) / n,
                    index_seconds=index_seconds + (embed_seconds if mode != "sparse" else 0.0),
                    query_seconds=query_seconds,
                    per_query_ndcg=ndcg,
                )
            )
    return results


def _describe(fusion: Fusion) -> str:
    if fusion.method == "rrf":
        return f"rrf k={fusion.rrf_k} w={fusion.sparse_weight:g}"
    return f"{fusion.method} w={fusion.sparse_weight:g}"


async def _embed_queries(embedder: Embedder, texts: list[str]) -> Vectors:
    if isinstance(embedder, EmbeddingCache):
        return await embedder.embed_queries(texts)
    if not texts:
        return np.zeros((0, embedder.dimension), dtype=np.float32)
    return np.stack([await embedder.embed_query(t) for t in texts]).astype(np.float32)


async def evaluate(
    dataset_dir: str | os.PathLike[str],
    database_url: str | None = None,
    *,
    mode: RetrievalMode = "sparse",
    embedder: Embedder | None = None,
    language: str = "en",
    params: Bm25Params = DEFAULT_PARAMS,
    options: ChunkingOptions | None = None,
) -> EvalResult:
    """Index a BEIR directory into a scratch database and measure nDCG@10 and Recall@100 in one mode."""
    [result] = await evaluate_modes(
        dataset_dir, database_url, modes=[mode], embedder=embedder, language=language, params=params, options=options
    )
    return result


def run_evaluation(
    dataset_dir: str | os.PathLike[str],
    database_url: str | None = None,
    *,
    modes: Sequence[EvalMode] = ("sparse",),
    embedder: Embedder | None = None,
    reranker: Reranker | None = None,
    language: str = "en",
    params: Bm25Params = DEFAULT_PARAMS,
) -> list[EvalResult]:
    """Synchronous wrapper of `evaluate_modes` for a CLI command."""

    async def run() -> list[EvalResult]:
        try:
            return await evaluate_modes(
                dataset_dir,
                database_url,
                modes=modes,
                embedder=embedder,
                reranker=reranker,
                language=language,
                params=params,
            )
        finally:
            for model in (embedder, reranker):
                if model is not None:
                    await model.aclose()

    return asyncio.run(run())


def results_table(results: Sequence[EvalResult]) -> str:
    """A Markdown table of several runs (one per mode), for the CLI and docs/benchmarks.md."""
    lines = [
        "| data set | database | mode | nDCG@10 | Recall@100 | chunks | ms/query |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.dataset} | {r.backend} | {r.mode} | {r.ndcg_at_10:.4f} | {r.recall_at_100:.4f} | {r.chunks} | "
            f"{1000 * r.query_seconds / max(1, r.queries):.1f} |"
        )
    return "\n".join(lines)
