"""SQLite and PostgreSQL return the same chunks in the same order with the same scores."""

from __future__ import annotations

import random
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from privategpt.rag import Bm25Params, RetrievalScope, index_prepared_many, prepare_source, retrieve
from tests.rag.conftest import BACKENDS, add_group, add_source, pg_url, sqlite_engine

pytestmark = pytest.mark.skipif(
    not {"sqlite", "postgresql"} <= set(BACKENDS), reason="needs both databases (TEST_DATABASES)"
)


def _corpus(seed: int = 7, documents: int = 160) -> list[tuple[str, str, int]]:
    """Deterministic Markdown documents over a Zipf-like vocabulary: (name, content, group index)."""
    rng = random.Random(seed)
    vocabulary = [f"term{i}" for i in range(600)]
    weights = [1.0 / (i + 1) for i in range(len(vocabulary))]
    docs = []
    for d in range(documents):
        sections = []
        for s in range(rng.randint(1, 4)):
            words = rng.choices(vocabulary, weights, k=rng.randint(20, 400))
            sections.append(f"## Part {s} {rng.choice(vocabulary)}\n\n" + " ".join(words) + ".")
        docs.append((f"Document {d} {rng.choice(vocabulary)}", "\n\n".join(sections), d % 6))
    return docs


@pytest.fixture(scope="module")
async def both(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, pg_socket_dir: str, pg_template: str
) -> AsyncIterator[dict[str, AsyncEngine]]:
    """The same corpus indexed into a SQLite and a PostgreSQL database."""
    sqlite_path = tmp_path_factory.mktemp("parity") / "rag.db"
    shutil.copy(sqlite_template, sqlite_path)
    pg_name = f"rag_parity_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(pg_url(pg_socket_dir, "postgres"), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{pg_name}" TEMPLATE "{pg_template}"'))
    engines = {"sqlite": sqlite_engine(sqlite_path), "postgresql": create_async_engine(pg_url(pg_socket_dir, pg_name))}
    docs = _corpus()
    prepared = [prepare_source(name, content) for name, content, _ in docs]
    for engine in engines.values():
        async with engine.begin() as conn:
            groups = [await add_group(conn, f"g{i}") for i in range(6)]
            items = []
            for i, ((name, content, g), p) in enumerate(zip(docs, prepared, strict=True)):
                source_id = await add_source(
                    conn, name, content, groups=(groups[g],), public=i % 5 == 0, source_id=f"s{i:05d}"
                )
                items.append((source_id, p))
            await index_prepared_many(conn, items)
    yield engines
    for engine in engines.values():
        await engine.dispose()
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE "{pg_name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.mark.parametrize(
    "params",
    [
        Bm25Params(),
        Bm25Params(memory_postings=False),
        Bm25Params(exhaustive_scope=0, memory_postings=False),
        Bm25Params(
            exhaustive_scope=0,
            impact_budget=40,
            min_impact_postings_per_term=5,
            rescore_pool=12,
            memory_postings=False,
        ),
        Bm25Params(
            exhaustive_scope=0,
            impact_budget=4,
            min_impact_postings_per_term=1,
            rescore_pool=1,
            pool_per_k=0,
            memory_postings=False,
        ),
    ],
    ids=["memory", "exhaustive", "impact-walk", "tight-impact-walk", "access-walk"],
)
async def test_same_results_on_both_databases(both: dict[str, AsyncEngine], params: Bm25Params) -> None:
    rng = random.Random(3)
    scopes = [
        RetrievalScope(frozenset({1}), False),
        RetrievalScope(frozenset({1, 2, 3}), True),
        RetrievalScope(frozenset(range(1, 7)), True),
        RetrievalScope(frozenset(), True),
    ]
    compared = 0
    for _ in range(25):
        query = " ".join(f"term{rng.randint(0, 300)}" for _ in range(rng.randint(1, 6)))
        scope = rng.choice(scopes)
        results = {}
        for backend, engine in both.items():
            async with engine.connect() as conn:
                hits = await retrieve(conn, query, scope, 10, params=params)
            results[backend] = [(h.source_id, h.heading_path, h.text, round(h.score, 12)) for h in hits]
        assert results["sqlite"] == results["postgresql"], query
        compared += len(results["sqlite"])
    assert compared > 100
