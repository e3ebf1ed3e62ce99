"""Dense-vector search at 100,000 chunks on SQLite and PostgreSQL, for narrow and wide access scopes.

Corpus: bench_retrieval.py's (SciFact sections, 10 chunks per source, each source in one of 100 groups),
plus one synthetic unit vector of 384 dimensions per chunk (the latency of a nearest-neighbour search does
not depend on what the vectors mean). Queries: random unit vectors for dense search; for hybrid, the same
plus the SciFact test claims, through `rag.hybrid.retrieve` (mode hybrid, k=10): BM25 and dense search for
their 100 candidates each, fusion and reading the 10 chunks returned, with the query vector given (the
query embedding is not included). Wall-clock and process CPU time are reported for each.

    python bench/bench_vectors.py                         # both databases, 100,000 chunks
    python bench/bench_vectors.py --backends sqlite --chunks 20000

Databases are built once under --workdir and reused (--rebuild to start over); a SQLite database left by
bench_retrieval.py (--retrieval-workdir) is copied rather than loaded again. Loading runs in a child
process, so the RSS reported is that of a process that only searches (on SQLite it holds the matrix).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_retrieval import GROUPS, _build, _queries, _rss_mb, bench_database, ensure_chunk_log, load_in_child

from privategpt.embeddings.base import Vectors
from privategpt.rag.hybrid import DenseIndex, retrieve
from privategpt.rag.retrieval import RetrievalScope
from privategpt.rag.vector_schema import postgres_vector_log_ddl, vector_ddl_for
from privategpt.rag.vectors import (
    EmbeddingModel,
    activate_model,
    count_missing_vectors,
    list_models,
    register_model,
    search_dense,
    write_vectors,
)

DIM = 384
RANK = 48


def _model_name(kind: str) -> str:
    return f"bench-{kind}-{DIM}"


def _vectors(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """n unit vectors. `isotropic`: uniform on the sphere, the worst case for HNSW (every direction
    matters, no neighbourhood structure). `structured`: a 48-dimensional signal in a fixed random
    subspace plus noise, closer to real sentence embeddings, whose intrinsic dimension is far below 384."""
    if kind == "isotropic":
        m = rng.standard_normal((n, DIM)).astype(np.float32)
    else:
        basis = np.random.default_rng(1234).standard_normal((RANK, DIM)).astype(np.float32) / np.sqrt(DIM)
        signal = rng.standard_normal((n, RANK)).astype(np.float32) @ basis
        m = signal + 0.18 * rng.standard_normal((n, DIM)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


async def _add_vectors(url: str, kind: str) -> None:
    """Give every chunk a vector of the `kind` model and make that model the active one (through the real
    register/activate path: the previous bench model is retired and its vectors deleted)."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        dialect = conn.dialect.name
        if not await conn.run_sync(lambda sync: sa_inspect(sync).has_table("rag_vectors")):
            for statement in vector_ddl_for(dialect):
                await conn.exec_driver_sql(statement)
        model = await register_model(conn, _model_name(kind), DIM)
        if model.state == "active" and await count_missing_vectors(conn, model.id) == 0:
            await engine.dispose()
            return
        ids = [int(r[0]) for r in await conn.execute(text("SELECT id FROM rag_chunks ORDER BY id"))]
    rng = np.random.default_rng(42)
    started = time.perf_counter()
    for start in range(0, len(ids), 5000):
        batch = ids[start : start + 5000]
        async with engine.begin() as conn:
            await write_vectors(conn, model.id, list(zip(batch, _vectors(kind, rng, len(batch)), strict=True)))
        print(f"\r  {start + len(batch)} vectors, {time.perf_counter() - started:.0f} s", end="", file=sys.stderr)
    print(f"\n  wrote {len(ids)} vectors in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    started = time.perf_counter()
    async with engine.begin() as conn:
        await activate_model(conn, model.id)
    print(f"  model activated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if dialect == "postgresql":
        async with engine.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql("VACUUM ANALYZE")
    else:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
    await engine.dispose()


async def ensure_vector_log(url: str) -> None:
    """PostgreSQL's vector change log (migration 0008) on databases built before it, without their HNSW
    indexes (which dense search no longer walks, and which every vector write would keep growing)."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql" and await conn.run_sync(
            lambda sync: sa_inspect(sync).has_table("rag_vectors")
        ):
            for statement in postgres_vector_log_ddl():
                await conn.exec_driver_sql(statement)
            names = await conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE starts_with(indexname, 'ix_rag_vectors_hnsw_')")
            )
            for (name,) in names.all():
                await conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{name}"')
    await engine.dispose()


def _load_in_child(url: str, n_chunks: int, with_chunks: bool, kind: str) -> None:
    if with_chunks:
        asyncio.run(_build(url, n_chunks))
    asyncio.run(ensure_vector_log(url))
    asyncio.run(_add_vectors(url, kind))


def _stats(timings: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    qs = statistics.quantiles(timings, n=100)
    stats = {"p50_ms": round(qs[49], 1), "p95_ms": round(qs[94], 1), "max_ms": round(max(timings), 1)}
    if cpu:
        cq = statistics.quantiles(cpu, n=100)
        stats |= {"cpu_p50_ms": round(cq[49], 1), "cpu_p95_ms": round(cq[94], 1)}
    return stats


class _GivenVectors:
    """The embedder of a benchmark that passes every query vector in: embedding is not what it times."""

    def __init__(self, model: EmbeddingModel) -> None:
        self.model_name, self.dimension = model.name, model.dimension

    async def embed_passages(self, texts: Any) -> Vectors:
        raise RuntimeError("bench_vectors passes its query vectors in")

    async def embed_query(self, text: str) -> Vectors:
        raise RuntimeError("bench_vectors passes its query vectors in")

    async def aclose(self) -> None:
        return None


async def _time_dense(
    engine: AsyncEngine, model_id: int, queries: np.ndarray, scope: RetrievalScope, k: int, small_scope: int | None
) -> list[float]:
    timings = []
    for q in queries:
        started = time.perf_counter()
        async with engine.connect() as conn:
            hits = await search_dense(conn, model_id, q, scope, k, small_scope=small_scope)
        timings.append(1000 * (time.perf_counter() - started))
        assert len(hits) == k, f"{len(hits)} results instead of {k}"
    return timings


async def _time_hybrid(
    engine: AsyncEngine, model: EmbeddingModel, queries: np.ndarray, texts: list[str], scope: RetrievalScope, k: int
) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU milliseconds of `rag.hybrid.retrieve` per query (SQLite's work is in-process
    and counted; PostgreSQL's is not)."""
    dense = DenseIndex(_GivenVectors(model), model)
    wall, cpu = [], []
    for q, query_text in zip(queries, texts, strict=False):
        started, cpu_started = time.perf_counter(), time.process_time()
        async with engine.connect() as conn:
            hits = await retrieve(conn, query_text, scope, k, mode="hybrid", dense=dense, query_vector=q)
        wall.append(1000 * (time.perf_counter() - started))
        cpu.append(1000 * (time.process_time() - cpu_started))
        assert len(hits) == k, f"{len(hits)} results instead of {k}"
    return wall, cpu


async def _recall(engine: AsyncEngine, model_id: int, queries: np.ndarray, scope: RetrievalScope, k: int) -> float:
    """Mean share of the exact top k that the default plan returns (below 1 only for HNSW)."""
    shares = []
    async with engine.connect() as conn:
        for q in queries:
            exact = await search_dense(conn, model_id, q, scope, k, small_scope=10**9)
            got = await search_dense(conn, model_id, q, scope, k)
            shares.append(len({c for c, _ in exact} & {c for c, _ in got}) / k)
    return statistics.mean(shares)


async def _measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = create_async_engine(url, pool_size=2)
    await ensure_chunk_log(engine)
    rng = np.random.default_rng(7)
    queries = _vectors(args.vectors, rng, args.queries).astype(np.float32)
    texts = _queries()[: args.queries]
    scopes = {
        "1% (1 group)": RetrievalScope(frozenset({0}), False),
        "10% (10 groups)": RetrievalScope(frozenset(range(10)), False),
        "100% (all groups + public)": RetrievalScope(frozenset(range(GROUPS)), True),
    }
    result: dict[str, Any] = {}
    async with engine.connect() as conn:
        model = next(m for m in await list_models(conn) if m.name == _model_name(args.vectors))
        result["vectors"] = (
            await conn.execute(text("SELECT count(*) FROM rag_vectors WHERE model_id = :m"), {"m": model.id})
        ).scalar_one()
    rss_before = _rss_mb()
    started = time.perf_counter()
    await _time_dense(engine, model.id, queries[:1], scopes["100% (all groups + public)"], args.width, None)
    result["first_query_ms"] = round(1000 * (time.perf_counter() - started), 1)
    result["rss_before_first_query_mb"] = round(rss_before, 1)
    # The dense matrix loaded, BM25's postings not yet (the first hybrid query loads them).
    result["rss_after_first_query_mb"] = round(_rss_mb(), 1)
    result["max_rss_after_first_query_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    # Warm the database caches (and the analyser's), as a running server would have them.
    for scope in scopes.values():
        await _time_dense(engine, model.id, queries[:20], scope, args.width, None)
    for scope in scopes.values():
        await _time_hybrid(engine, model, queries[:20], texts[:20], scope, args.k)
    for label, scope in scopes.items():
        row = result[label] = {
            f"dense_k{args.k}": _stats(await _time_dense(engine, model.id, queries, scope, args.k, None)),
            f"dense_k{args.width}": _stats(await _time_dense(engine, model.id, queries, scope, args.width, None)),
            f"hybrid_k{args.k}": _stats(*await _time_hybrid(engine, model, queries, texts, scope, args.k)),
        }
        print(
            f"  {label:28s} "
            + "   ".join(f"{name} p50 {v['p50_ms']:6.1f} p95 {v['p95_ms']:6.1f} ms" for name, v in row.items())
            + f"   hybrid CPU p50 {row[f'hybrid_k{args.k}']['cpu_p50_ms']:5.1f} ms   load {os.getloadavg()[0]:.2f}",
            file=sys.stderr,
        )
    # What a server process that searches holds (SQLite: the matrix), before the runs below copy it.
    result["rss_after_timed_runs_mb"] = round(_rss_mb(), 1)
    # The alternative plans, for the record: every scope scored exhaustively, every scope "large".
    for label in ("10% (10 groups)", "100% (all groups + public)"):
        exact = _stats(await _time_dense(engine, model.id, queries[:50], scopes[label], args.width, 10**9))
        result[label]["dense_exhaustive"] = exact
        print(f"  {label:28s} exhaustive plan, k={args.width}: p50 {exact['p50_ms']:6.1f} ms", file=sys.stderr)
        share = await _recall(engine, model.id, queries[:50], scopes[label], args.width)
        result[label][f"top{args.width}_recall"] = round(share, 4)
        print(f"  {label:28s} top-{args.width} recall against exact search: {share:.4f}", file=sys.stderr)
    large = _stats(await _time_dense(engine, model.id, queries[:50], scopes["1% (1 group)"], args.width, 0))
    result["1% (1 group)"]["dense_large_plan"] = large
    print(f"  {'1% (1 group)':28s} large-scope plan, k={args.width}: p50 {large['p50_ms']:6.1f} ms", file=sys.stderr)
    result["load_average"] = round(os.getloadavg()[0], 2)
    result["rss_mb"] = round(_rss_mb(), 1)
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    await engine.dispose()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workdir", default="/tmp/pgpt-bench-vectors")
    parser.add_argument("--retrieval-workdir", default="/tmp/pgpt-bench", help="bench_retrieval.py's databases")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--k", type=int, default=10, help="results of a dense-only search and of hybrid")
    parser.add_argument("--width", type=int, default=100, help="candidates per list in hybrid (rag.hybrid)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--vectors", choices=["structured", "isotropic"], default="structured")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        print(f"{backend}:", file=sys.stderr)
        seed = Path(args.retrieval_workdir) / f"bench-{args.chunks}.db"
        url, fresh = bench_database(backend, workdir, args.chunks, args.rebuild)
        with_chunks = True
        if backend == "sqlite" and fresh and seed.exists():
            # The same corpus as bench_retrieval.py's: copied, not loaded again.
            shutil.copyfile(seed, workdir / f"bench-{args.chunks}.db")
            with_chunks = False
        load_in_child(backend, _load_in_child, url, args.chunks, fresh and with_chunks, args.vectors)
        report[backend] = asyncio.run(_measure(url, args))
        print(f"  RSS {report[backend]['rss_mb']} MB (max {report[backend]['max_rss_mb']} MB)", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
