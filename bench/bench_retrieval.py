"""Retrieval latency at 100,000 chunks on SQLite and PostgreSQL, for a narrow and a wide access scope.

Corpus: Markdown sources assembled from SciFact abstracts (one `##` section of ~180 words per chunk,
sentences taken in order from random abstracts), 10 chunks per source, each source in one of 100 groups.
Queries: the 300 SciFact test claims. Scopes: one group (1 % of the sources), ten groups (10 %), and
every group plus public sources (everything). k = 10 and k = 100 (what hybrid retrieval asks for).

    python bench/bench_retrieval.py                       # both databases, 100,000 chunks
    python bench/bench_retrieval.py --compare --overlap 50   # and the SQL plans, in the same run
    python bench/bench_retrieval.py --backends sqlite --chunks 20000

Databases are built once under --workdir and reused by later runs (--rebuild to start over). The load
runs in a child process so the reported RSS is that of a process that only searches.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing
import os
import random
import re
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from privategpt.rag.retrieval import Bm25Params, RetrievalScope, index_prepared_many, prepare_source, retrieve_sparse
from privategpt.rag.schema import ddl_for, standalone_host_ddl
from privategpt.rag.vector_schema import chunk_log_ddl
from privategpt.rag.vectors import get_model, search_dense

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
CHUNKS_PER_SOURCE = 10
GROUPS = 100
SECTION_WORDS = 180


def _sentences() -> tuple[list[str], list[list[str]]]:
    titles, abstracts = [], []
    with gzip.open(DATA / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", doc["text"]) if s.strip()]
            if sentences:
                titles.append(doc["title"])
                abstracts.append(sentences)
    return titles, abstracts


def _documents(n_sources: int, seed: int = 42) -> list[tuple[str, str, int]]:
    """(name, markdown, group) for each source."""
    rng = random.Random(seed)
    titles, abstracts = _sentences()
    docs = []
    for s in range(n_sources):
        title = titles[rng.randrange(len(titles))]
        parts = [f"# {title}"]
        for _ in range(CHUNKS_PER_SOURCE):
            a = rng.randrange(len(abstracts))
            heading = titles[a]
            body: list[str] = []
            words = 0
            i = rng.randrange(len(abstracts[a]))
            while words < SECTION_WORDS:
                sentence = abstracts[a][i % len(abstracts[a])]
                body.append(sentence)
                words += len(sentence.split())
                i += 1
                if i % len(abstracts[a]) == 0:
                    a = rng.randrange(len(abstracts))
            parts.append(f"## {heading}\n\n{' '.join(body)}")
        docs.append((title[:255], "\n\n".join(parts), s % GROUPS))
    return docs


async def _build(url: str, n_chunks: int) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        dialect = conn.dialect.name
        for statement in [*standalone_host_ddl(dialect), *ddl_for(dialect)]:
            await conn.exec_driver_sql(statement)
        await conn.execute(
            text("INSERT INTO groups (id, name) VALUES (:id, :name)"),
            [{"id": g, "name": f"group {g}"} for g in range(GROUPS)],
        )
    docs = _documents(n_chunks // CHUNKS_PER_SOURCE)
    started = time.perf_counter()
    total = 0
    for start in range(0, len(docs), 500):
        batch = docs[start : start + 500]
        ids = [str(uuid.UUID(int=start + i)) for i in range(len(batch))]
        prepared = [(sid, prepare_source(name, md)) for sid, (name, md, _) in zip(ids, batch, strict=True)]
        total += sum(len(p.chunks) for _, p in prepared)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO sources (id, name, content, is_public, state) "
                    "VALUES (:id, :n, :c, FALSE, 'vectorized')"
                ),
                [{"id": sid, "n": name, "c": md} for sid, (name, md, _) in zip(ids, batch, strict=True)],
            )
            await conn.execute(
                text("INSERT INTO source_groups (source_id, group_id) VALUES (:s, :g)"),
                [{"s": sid, "g": g} for sid, (_, _, g) in zip(ids, batch, strict=True)],
            )
            await index_prepared_many(conn, prepared)
        print(f"\r  {total} chunks, {time.perf_counter() - started:.0f} s", end="", file=sys.stderr)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")
    if dialect == "postgresql":
        async with engine.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql("VACUUM ANALYZE")
    print(f"\n  loaded {total} chunks in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    await engine.dispose()


def _build_in_child(url: str, n_chunks: int) -> None:
    asyncio.run(_build(url, n_chunks))


def _queries() -> list[str]:
    with (DATA / "queries.test.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _time(
    engine: AsyncEngine, queries: list[str], scope: RetrievalScope, k: int, params: Bm25Params
) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU milliseconds per query (CPU includes SQLite, which runs in-process)."""
    wall, cpu = [], []
    for q in queries:
        started, cpu_started = time.perf_counter(), time.process_time()
        async with engine.connect() as conn:
            await retrieve_sparse(conn, q, scope, k, params=params)
        wall.append(1000 * (time.perf_counter() - started))
        cpu.append(1000 * (time.process_time() - cpu_started))
    return wall, cpu


async def _overlap(
    engine: AsyncEngine, queries: list[str], scope: RetrievalScope, k: int, plans: dict[str, Bm25Params]
) -> dict[str, float]:
    """Per plan: mean share of the exact BM25 top k that it returns too."""
    exact = Bm25Params(exhaustive_scope=10**9, memory_postings=False)
    shares: dict[str, list[float]] = {plan: [] for plan in plans}
    async with engine.connect() as conn:
        for q in queries:
            want = {c.chunk_id for c in await retrieve_sparse(conn, q, scope, k, params=exact)}
            for plan, params in plans.items():
                got = {c.chunk_id for c in await retrieve_sparse(conn, q, scope, k, params=params)}
                if want:
                    shares[plan].append(len(want & got) / len(want))
    return {plan: statistics.mean(s) if s else 1.0 for plan, s in shares.items()}


def _summary(wall: list[float], cpu: list[float]) -> dict[str, float]:
    qs, cq = statistics.quantiles(wall, n=100), statistics.quantiles(cpu, n=100)
    return {
        "p50_ms": round(qs[49], 1),
        "p95_ms": round(qs[94], 1),
        "max_ms": round(max(wall), 1),
        "cpu_p50_ms": round(cq[49], 1),
        "cpu_p95_ms": round(cq[94], 1),
    }


async def _measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = create_async_engine(url, pool_size=2)
    await ensure_chunk_log(engine)
    # The default: in-memory postings (rag.sparse_index), exact.
    params = Bm25Params()
    plans = {"memory": params}
    if args.compare:
        # The SQL plans (a database without the chunk log): the impact walk, and the plan before it, where
        # large scopes walk each term's postings inside the access filter.
        sql = Bm25Params(
            posting_budget=args.budget, impact_budget=args.impact_budget, rescore_pool=args.pool, memory_postings=False
        )
        plans["impact walk"] = sql
        plans["access walk"] = Bm25Params(posting_budget=args.budget, impact_walk=False, memory_postings=False)
    queries = _queries()
    scopes = {
        "1% (1 group)": RetrievalScope(frozenset({0}), False),
        "10% (10 groups)": RetrievalScope(frozenset(range(10)), False),
        "100% (all groups + public)": RetrievalScope(frozenset(range(GROUPS)), True),
    }
    result: dict[str, Any] = {}
    async with engine.connect() as conn:
        result["chunks"] = (await conn.execute(text("SELECT n_chunks FROM rag_stats"))).scalar_one()
    rss_before = _rss_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    await _time(engine, queries[:1], scopes["1% (1 group)"], 10, params)
    result["first_query_s"] = round(time.perf_counter() - started, 2)  # loads the in-memory postings
    result["first_query_cpu_s"] = round(time.process_time() - cpu_started, 2)
    result["rss_before_first_query_mb"] = round(rss_before, 1)
    result["rss_after_first_query_mb"] = round(_rss_mb(), 1)
    # The process's peak so far: the load of the postings (nothing else has run).
    result["max_rss_after_first_query_mb"] = round(_max_rss_mb(), 1)
    print(
        f"  first query {result['first_query_s']} s ({result['first_query_cpu_s']} s CPU), RSS {rss_before:.0f} -> "
        f"{_rss_mb():.0f} MB, peak {_max_rss_mb():.0f} MB",
        file=sys.stderr,
    )
    if args.dense_model is not None:
        # What a server holds for hybrid retrieval too: the model's vectors (an in-process matrix where the
        # backend keeps one), loaded by a first dense query.
        started = time.perf_counter()
        async with engine.connect() as conn:
            model = await get_model(conn, args.dense_model)
            query = np.random.default_rng(0).standard_normal(model.dimension).astype(np.float32)
            await search_dense(conn, model.id, query / np.linalg.norm(query), scopes["1% (1 group)"], 10)
        result["first_dense_query_s"] = round(time.perf_counter() - started, 2)
        result["rss_after_first_dense_query_mb"] = round(_rss_mb(), 1)
        result["max_rss_after_first_dense_query_mb"] = round(_max_rss_mb(), 1)
        print(
            f"  first dense query {result['first_dense_query_s']} s,"
            f" RSS {_rss_mb():.0f} MB, peak {_max_rss_mb():.0f} MB",
            file=sys.stderr,
        )
    # Warm the analyser's token cache and the database caches, as a running server would have them.
    await _time(engine, queries, scopes["1% (1 group)"], 10, params)
    await _time(engine, queries[:50], scopes["100% (all groups + public)"], 10, params)
    for k in args.k:
        for label, scope in scopes.items():
            for plan, plan_params in plans.items():
                figures = _summary(*await _time(engine, queries, scope, k, plan_params))
                result[f"k={k} {label} {plan}"] = figures
                print(
                    f"  k={k:<3d} {label:28s} {plan:12s} p50 {figures['p50_ms']:6.1f} ms"
                    f"  p95 {figures['p95_ms']:6.1f} ms   max {figures['max_ms']:6.1f} ms"
                    f"   (process CPU p50 {figures['cpu_p50_ms']:5.1f} ms,"
                    f" p95 {figures['cpu_p95_ms']:5.1f} ms)",
                    file=sys.stderr,
                )
    result["load_average"] = round(os.getloadavg()[0], 2)
    result["rss_after_timed_queries_mb"] = round(_rss_mb(), 1)
    result["max_rss_before_exactness_check_mb"] = round(_max_rss_mb(), 1)
    if args.overlap:
        for k in args.k:
            for label in ("10% (10 groups)", "100% (all groups + public)"):
                shares = await _overlap(engine, queries[: args.overlap], scopes[label], k, plans)
                for plan, share in shares.items():
                    result[f"top-{k} overlap with exact, {label}, {plan}"] = round(share, 4)
                    print(f"  top-{k} overlap with exhaustive BM25, {label}, {plan}: {share:.4f}", file=sys.stderr)
    result["rss_mb"] = round(_rss_mb(), 1)
    result["max_rss_mb"] = round(_max_rss_mb(), 1)
    await engine.dispose()
    return result


async def ensure_chunk_log(engine: AsyncEngine) -> None:
    """The chunk log that in-memory postings follow (migration 0007), on databases built before it."""
    async with engine.begin() as conn:
        for statement in chunk_log_ddl(conn.dialect.name):
            await conn.exec_driver_sql(statement)


def load_in_child(backend: str, target: Any, *args: Any) -> None:
    """Run a loader in a spawned process, so the measuring process's RSS holds only what searching needs."""
    child = multiprocessing.get_context("spawn").Process(target=target, args=args)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"loading {backend} failed")


def bench_database(backend: str, workdir: Path, chunks: int, rebuild: bool) -> tuple[str, bool]:
    """The URL of a backend's benchmark database under `workdir`, and whether it is empty (to be loaded)."""
    if backend == "sqlite":
        path = workdir / f"bench-{chunks}.db"
        if rebuild:
            path.unlink(missing_ok=True)
        return f"sqlite+aiosqlite:///{path}", not path.exists()
    import pgserver

    pgdir = workdir / f"pg-{chunks}"
    server = pgserver.get_server(pgdir, cleanup_mode=None)  # type: ignore[attr-defined]
    dbname = "bench"
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}';")
    if rebuild and "1 row" in exists:
        server.psql(f"DROP DATABASE {dbname};")
    fresh = rebuild or "1 row" not in exists
    if fresh:
        server.psql(f"CREATE DATABASE {dbname};")
    return f"postgresql+asyncpg://postgres@/{dbname}?host={pgdir}", fresh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workdir", default="/tmp/pgpt-bench")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--k", type=lambda v: [int(x) for x in v.split(",")], default=[10, 100], help="e.g. 10,100")
    parser.add_argument("--overlap", type=int, default=50, help="queries for the exactness check (0: skip)")
    parser.add_argument("--budget", type=int, default=Bm25Params().posting_budget, help="access walk postings")
    parser.add_argument("--impact-budget", type=int, default=Bm25Params().impact_budget, help="impact walk postings")
    parser.add_argument("--pool", type=int, default=Bm25Params().rescore_pool, help="chunks rescored exactly")
    parser.add_argument(
        "--dense-model",
        type=int,
        default=None,
        help="after the first query, load this embedding model's vectors too (a database with vectors, e.g. "
        "--workdir /tmp/pgpt-bench-vectors of bench_vectors.py) and report RSS with them",
    )
    parser.add_argument("--compare", action="store_true", help="also time the SQL plans (impact walk, access walk)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        print(f"{backend}:", file=sys.stderr)
        url, fresh = bench_database(backend, workdir, args.chunks, args.rebuild)
        if fresh:
            load_in_child(backend, _build_in_child, url, args.chunks)
        report[backend] = asyncio.run(_measure(url, args))
        print(f"  RSS {report[backend]['rss_mb']} MB (max {report[backend]['max_rss_mb']} MB)", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
