"""Offline evaluation on a BEIR-format directory through the real retrieval core.

Each corpus document becomes a public, vectorized source (title as name, text as Markdown content), is
chunked and indexed by the same code as ingestion, into a scratch database created for the run; every
query goes through `retrieve`. A document's rank is that of its best chunk. Metrics follow trec_eval
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
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from privategpt.rag.chunking import ChunkingOptions
from privategpt.rag.retrieval import (
    DEFAULT_PARAMS,
    Bm25Params,
    PreparedSource,
    RetrievalMode,
    RetrievalScope,
    index_prepared_many,
    prepare_source,
    retrieve,
)
from privategpt.rag.schema import ddl_for, standalone_host_ddl

PUBLIC = RetrievalScope(group_ids=frozenset(), include_public=True)
# Chunks retrieved per query: enough to rank 100 distinct documents for Recall@100.
_CHUNKS_PER_QUERY = 300
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
    for statement in [*standalone_host_ddl(dialect), *ddl_for(dialect)]:
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
            {"id": f"d{start + i}", "name": (title or doc_id)[:255], "content": body}
            for i, (doc_id, (title, body)) in enumerate(batch)
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


async def evaluate(
    dataset_dir: str | os.PathLike[str],
    database_url: str | None = None,
    *,
    mode: RetrievalMode = "sparse",
    language: str = "en",
    params: Bm25Params = DEFAULT_PARAMS,
    options: ChunkingOptions | None = None,
) -> EvalResult:
    """Index a BEIR directory into a scratch database and measure nDCG@10 and Recall@100."""
    dataset = await asyncio.to_thread(load_beir, dataset_dir)
    async with scratch_engine(database_url) as engine:
        started = time.perf_counter()
        doc_of_source, n_chunks = await load_corpus(
            engine, dataset.corpus, language=language, options=options, params=params
        )
        index_seconds = time.perf_counter() - started
        judged_queries = [q for q in dataset.queries if any(g > 0 for g in dataset.qrels.get(q, {}).values())]
        ndcg: dict[str, float] = {}
        recall: dict[str, float] = {}
        started = time.perf_counter()
        async with engine.connect() as conn:
            for query_id in judged_queries:
                hits = await retrieve(
                    conn, dataset.queries[query_id], PUBLIC, _CHUNKS_PER_QUERY, 0.0, mode,
                    language=language, params=params,
                )  # fmt: skip
                ranked = list(dict.fromkeys(doc_of_source[h.source_id] for h in hits))
                ndcg[query_id] = ndcg_at(ranked, dataset.qrels[query_id])
                recall[query_id] = recall_at(ranked, dataset.qrels[query_id])
        query_seconds = time.perf_counter() - started
        backend = engine.dialect.name
    n = max(1, len(judged_queries))
    return EvalResult(
        dataset=dataset.name,
        backend=backend,
        mode=mode,
        documents=len(dataset.corpus),
        chunks=n_chunks,
        queries=len(judged_queries),
        ndcg_at_10=sum(ndcg.values()) / n,
        recall_at_100=sum(recall.values()) / n,
        index_seconds=index_seconds,
        query_seconds=query_seconds,
        per_query_ndcg=ndcg,
    )


def run_evaluation(
    dataset_dir: str | os.PathLike[str],
    database_url: str | None = None,
    *,
    mode: RetrievalMode = "sparse",
    language: str = "en",
    params: Bm25Params = DEFAULT_PARAMS,
) -> EvalResult:
    """Synchronous wrapper of `evaluate` for a CLI command."""
    return asyncio.run(evaluate(dataset_dir, database_url, mode=mode, language=language, params=params))


def main(argv: list[str] | None = None) -> int:
    """`python -m privategpt.rag.evaluation DATASET_DIR [--database-url URL] [--language en] [--json]`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dataset_dir")
    parser.add_argument("--database-url", default=None, help="PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--language", default="en")
    parser.add_argument("--k1", type=float, default=DEFAULT_PARAMS.k1)
    parser.add_argument("--b", type=float, default=DEFAULT_PARAMS.b)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    params = Bm25Params(k1=args.k1, b=args.b)
    result = run_evaluation(args.dataset_dir, args.database_url, language=args.language, params=params)
    print(json.dumps(result.as_dict()) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
