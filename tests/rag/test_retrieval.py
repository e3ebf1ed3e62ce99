"""Retrieval through the real index on SQLite and PostgreSQL: ranking, access scope, index upkeep."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from privategpt.rag import (
    Bm25Params,
    RetrievalScope,
    delete_source_chunks,
    index_source,
    retrieve,
)
from tests.rag.conftest import RESOURCES, add_group, add_source

PUBLIC = RetrievalScope(frozenset(), include_public=True)
# The default: in-memory postings (exact), whatever the scope.
# The SQL plans (a database without the chunk log): every visible chunk scored on small scopes...
SQL = Bm25Params(memory_postings=False)
# ... and the large-scope plan (impact-ordered walk), forced even on tiny test corpora.
WALK = Bm25Params(exhaustive_scope=0, memory_postings=False)
# ... with a budget so small that common terms are truncated.
TIGHT_WALK = Bm25Params(
    exhaustive_scope=0,
    impact_budget=8,
    min_impact_postings_per_term=2,
    posting_budget=8,
    min_postings_per_term=2,
    memory_postings=False,
)
# ... with a pool so small that the invisible best postings crowd out the visible ones: the
# access-filtered walk must take over.
TIGHT_POOL = Bm25Params(
    exhaustive_scope=0,
    impact_budget=4,
    min_impact_postings_per_term=1,
    rescore_pool=1,
    pool_per_k=0,
    memory_postings=False,
)
PLANS = [Bm25Params(), SQL, WALK, TIGHT_WALK, TIGHT_POOL]
PLAN_IDS = ["memory", "exhaustive", "walk", "tight-walk", "tight-pool"]


async def _load_golden(conn: AsyncConnection) -> dict[str, str]:
    """Index the golden corpus as public sources; returns source id -> document id."""
    ids = {}
    for line in (RESOURCES / "golden" / "corpus.jsonl").read_text().splitlines():
        doc = json.loads(line)
        source_id = await add_source(conn, doc["title"], doc["text"], public=True)
        await index_source(conn, source_id, doc["title"], doc["text"])
        ids[source_id] = doc["_id"]
    return ids


def _golden_queries() -> list[tuple[str, str]]:
    queries = {}
    for line in (RESOURCES / "golden" / "queries.jsonl").read_text().splitlines():
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    expected = {}
    for line in (RESOURCES / "golden" / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query_id, doc_id, _ = line.split("\t")
        expected[query_id] = doc_id
    return [(queries[q], expected[q]) for q in sorted(queries)]


@pytest.mark.parametrize("params", PLANS, ids=PLAN_IDS)
async def test_golden_ranking(engine: AsyncEngine, params: Bm25Params) -> None:
    async with engine.begin() as conn:
        doc_of = await _load_golden(conn)
    async with engine.connect() as conn:
        for query, expected in _golden_queries():
            hits = await retrieve(conn, query, PUBLIC, 3, params=params)
            assert doc_of[hits[0].source_id] == expected, query


async def test_golden_scores_are_pinned(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        doc_of = await _load_golden(conn)
    async with engine.connect() as conn:
        hits = await retrieve(conn, "my laptop is broken", PUBLIC, 3)
    assert [doc_of[h.source_id] for h in hits] == ["laptop", "security", "onboarding"]
    assert hits[0].source_name == "Replacing a broken laptop"
    # Same numbers on both databases: the scale a scenario's similarity_threshold is set on.
    assert [round(h.score, 4) for h in hits] == [0.7243, 0.2031, 0.1971]


async def test_scores_are_normalised_and_threshold_applies(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await _load_golden(conn)
    async with engine.connect() as conn:
        hits = await retrieve(conn, "laptop password badge printer leave", PUBLIC, 10)
        assert len(hits) >= 4
        assert all(0.0 < h.score < 1.0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        cut = hits[1].score
        kept = await retrieve(conn, "laptop password badge printer leave", PUBLIC, 10, threshold=cut)
        assert [h.chunk_id for h in kept] == [h.chunk_id for h in hits if h.score >= cut]


async def test_chunk_fields(engine: AsyncEngine) -> None:
    doc = "# Handbook\n\n## Travel\n\nBook trains through the travel portal.\n"
    async with engine.begin() as conn:
        source_id = await add_source(conn, "Company handbook", doc, public=True)
        assert await index_source(conn, source_id, "Company handbook", doc) == 1
    async with engine.connect() as conn:
        [hit] = await retrieve(conn, "train travel portal", PUBLIC, 5)
    assert hit.source_id == source_id
    assert hit.source_name == "Company handbook"
    assert hit.heading_path == ("Handbook", "Travel")
    assert hit.text == "Book trains through the travel portal."


async def test_document_name_is_indexed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        source_id = await add_source(conn, "Quarterly zebra report", "Numbers went up.", public=True)
        await index_source(conn, source_id, "Quarterly zebra report", "Numbers went up.")
    async with engine.connect() as conn:
        assert [h.source_id for h in await retrieve(conn, "zebra", PUBLIC, 5)] == [source_id]


async def test_queries_without_known_terms_or_scope_return_nothing(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await _load_golden(conn)
    async with engine.connect() as conn:
        assert await retrieve(conn, "the and of", PUBLIC, 5) == []
        assert await retrieve(conn, "xylophonist", PUBLIC, 5) == []
        assert await retrieve(conn, "laptop", RetrievalScope(frozenset(), False), 5) == []
        assert await retrieve(conn, "laptop", PUBLIC, 0) == []
        # Without an embedding model the dense modes are BM25.
        sparse = await retrieve(conn, "laptop", PUBLIC, 5)
        assert sparse and await retrieve(conn, "laptop", PUBLIC, 5, mode="dense") == sparse
        assert await retrieve(conn, "laptop", PUBLIC, 5, mode="hybrid") == sparse


# -- access scope ---------------------------------------------------------------------------------


@pytest.mark.parametrize("params", PLANS, ids=PLAN_IDS)
async def test_invisible_best_match_is_never_returned(engine: AsyncEngine, params: Bm25Params) -> None:
    async with engine.begin() as conn:
        mine, theirs = await add_group(conn, "mine"), await add_group(conn, "theirs")
        secret = await add_source(conn, "Secret merger plan", "merger merger merger plan", groups=(theirs,))
        await index_source(conn, secret, "Secret merger plan", "merger merger merger plan")
        private = await add_source(conn, "Draft", "merger rumours", groups=(theirs,), state="processing")
        await index_source(conn, private, "Draft", "merger rumours")
        broken = await add_source(conn, "Broken", "merger notes", public=True, state="error")
        await index_source(conn, broken, "Broken", "merger notes")
        visible = await add_source(conn, "Canteen news", "a merger of two menus", groups=(mine,))
        await index_source(conn, visible, "Canteen news", "a merger of two menus")
    async with engine.connect() as conn:
        hits = await retrieve(conn, "merger plan", RetrievalScope(frozenset({mine}), True), 10, params=params)
        assert [h.source_id for h in hits] == [visible]
        hits = await retrieve(conn, "merger plan", RetrievalScope(frozenset({theirs}), False), 10, params=params)
        assert [h.source_id for h in hits] == [secret]
        assert await retrieve(conn, "merger", RetrievalScope(frozenset({999}), False), 10, params=params) == []


@pytest.mark.parametrize("params", PLANS, ids=PLAN_IDS)
async def test_k_results_when_many_invisible_documents_outrank_visible_ones(
    engine: AsyncEngine, params: Bm25Params
) -> None:
    async with engine.begin() as conn:
        visible_group, hidden_group = await add_group(conn, "visible"), await add_group(conn, "hidden")
        for i in range(40):
            body = f"Rocket engine rocket engine rocket fuel test number {i}."
            source_id = await add_source(conn, f"Hidden {i}", body, groups=(hidden_group,))
            await index_source(conn, source_id, f"Rocket report {i}", body)
        visible_ids = set()
        for i in range(12):
            body = f"The rocket was mentioned once in meeting minutes {i} among many other unrelated words."
            source_id = await add_source(conn, f"Minutes {i}", body, groups=(visible_group,))
            await index_source(conn, source_id, f"Minutes {i}", body)
            visible_ids.add(source_id)
    async with engine.connect() as conn:
        scope = RetrievalScope(frozenset({visible_group}), False)
        hits = await retrieve(conn, "rocket engine fuel", scope, 10, params=params)
    assert len(hits) == 10
    assert {h.source_id for h in hits} <= visible_ids


async def test_public_flag_and_groups_combine(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        g1, g2 = await add_group(conn, "one"), await add_group(conn, "two")
        ids = {}
        for name, kwargs in [("public", {"public": True}), ("one", {"groups": (g1,)}), ("two", {"groups": (g2,)}),
                             ("both", {"groups": (g1, g2)})]:  # fmt: skip
            ids[name] = await add_source(conn, name, "shared keyword", **kwargs)  # type: ignore[arg-type]
            await index_source(conn, ids[name], name, "shared keyword")

    async def seen(scope: RetrievalScope) -> set[str]:
        async with engine.connect() as conn:
            names = {v: k for k, v in ids.items()}
            return {names[h.source_id] for h in await retrieve(conn, "keyword", scope, 10)}

    assert await seen(RetrievalScope(frozenset(), True)) == {"public"}
    assert await seen(RetrievalScope(frozenset({g1}), False)) == {"one", "both"}
    assert await seen(RetrievalScope(frozenset({g1, g2}), True)) == {"public", "one", "two", "both"}


async def test_group_change_and_state_change_apply_at_once(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        g1, g2 = await add_group(conn, "one"), await add_group(conn, "two")
        source_id = await add_source(conn, "Doc", "quantum widget", groups=(g1,))
        await index_source(conn, source_id, "Doc", "quantum widget")
    scope = RetrievalScope(frozenset({g1}), False)
    async with engine.begin() as conn:
        assert len(await retrieve(conn, "quantum", scope, 5)) == 1
        await conn.execute(
            text("UPDATE source_groups SET group_id = :g2 WHERE source_id = :s"), {"g2": g2, "s": source_id}
        )
        # Inside the same transaction the move is already effective.
        assert await retrieve(conn, "quantum", scope, 5) == []
    async with engine.begin() as conn:
        scope2 = RetrievalScope(frozenset({g2}), False)
        assert len(await retrieve(conn, "quantum", scope2, 5)) == 1
        await conn.execute(text("UPDATE sources SET state = 'processing' WHERE id = :s"), {"s": source_id})
        assert await retrieve(conn, "quantum", scope2, 5) == []


@pytest.mark.parametrize("params", PLANS, ids=PLAN_IDS)
async def test_regrouping_applies_at_once_whatever_the_plan_remembers(engine: AsyncEngine, params: Bm25Params) -> None:
    """Each scope's size and share are remembered for a few seconds to pick and size the plan; what the
    caller may see is still read by every query."""
    async with engine.begin() as conn:
        g1, g2 = await add_group(conn, "one"), await add_group(conn, "two")
        ids = []
        for i in range(6):
            ids.append(await add_source(conn, f"Doc {i}", f"quantum widget {i}", groups=(g1 if i < 3 else g2,)))
            await index_source(conn, ids[-1], f"Doc {i}", f"quantum widget {i}")
    scope = RetrievalScope(frozenset({g1}), False)

    async def seen() -> set[str]:
        async with engine.connect() as conn:
            return {c.source_id for c in await retrieve(conn, "quantum widget", scope, 10, params=params)}

    assert await seen() == set(ids[:3])
    async with engine.begin() as conn:  # one leaves the group, two join it
        await conn.execute(text("DELETE FROM source_groups WHERE source_id = :s"), {"s": ids[0]})
        await conn.execute(
            text("UPDATE source_groups SET group_id = :g WHERE source_id IN (:a, :b)"),
            {"g": g1, "a": ids[3], "b": ids[4]},
        )
    assert await seen() == set(ids[1:5])


# -- index upkeep ---------------------------------------------------------------------------------


async def _index_consistent(conn: AsyncConnection) -> None:
    """rag_terms.df and rag_stats equal what the postings and chunks say."""
    stats = (await conn.execute(text("SELECT n_chunks, total_length FROM rag_stats"))).one()
    actual = (await conn.execute(text("SELECT count(*), coalesce(sum(length), 0) FROM rag_chunks"))).one()
    assert tuple(stats) == tuple(actual)
    drift = await conn.execute(
        text(
            "SELECT t.term, t.df, (SELECT count(*) FROM rag_postings p WHERE p.term_id = t.id) AS real_df "
            "FROM rag_terms t"
        )
    )
    assert [r for r in drift if r.df != r.real_df] == []


async def test_reindex_replaces_and_delete_cascades(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        keep = await add_source(conn, "Keep", "alpha beta", public=True)
        await index_source(conn, keep, "Keep", "alpha beta")
        source_id = await add_source(conn, "Doc", "alpha gamma", public=True)
        await index_source(conn, source_id, "Doc", "# One\n\nalpha gamma\n\n# Two\n\ngamma delta " * 20)
        await _index_consistent(conn)
        # Re-indexing replaces the old chunks.
        await index_source(conn, source_id, "Doc", "epsilon only")
        await _index_consistent(conn)
        assert await retrieve(conn, "gamma", PUBLIC, 5) == []
        assert len(await retrieve(conn, "epsilon", PUBLIC, 5)) == 1
        # Deleting the source row removes its chunks through the cascade, statistics included.
        await conn.execute(text("DELETE FROM sources WHERE id = :s"), {"s": source_id})
        await _index_consistent(conn)
        assert await retrieve(conn, "epsilon", PUBLIC, 5) == []
        count = await conn.execute(text("SELECT count(*) FROM rag_chunks WHERE source_id = :s"), {"s": source_id})
        assert count.scalar_one() == 0
        # And an explicit delete of a source's chunks.
        await delete_source_chunks(conn, keep)
        await _index_consistent(conn)
        assert (await conn.execute(text("SELECT n_chunks FROM rag_stats"))).scalar_one() == 0


async def test_empty_content_indexes_nothing(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        source_id = await add_source(conn, "Empty", "", public=True)
        assert await index_source(conn, source_id, "Empty", "") == 0
        await _index_consistent(conn)


# -- in-memory postings (large scopes) ------------------------------------------------------------

MEMORY = Bm25Params()
EXACT = Bm25Params(exhaustive_scope=10**9, memory_postings=False)


async def _hits(engine: AsyncEngine, query: str, params: Bm25Params) -> list[tuple[str, float]]:
    async with engine.connect() as conn:
        return [(h.source_id, h.score) for h in await retrieve(conn, query, PUBLIC, 10, params=params)]


async def test_memory_postings_follow_writes_cascades_and_rollbacks(engine: AsyncEngine) -> None:
    """Each process's in-memory postings follow the chunk log: re-indexing, deletes cascaded from the
    source, a rolled-back transaction (whose log ids SQLite reuses) and changes inside the caller's own
    transaction; the scores are the exhaustive plan's, to the last bit."""
    async with engine.begin() as conn:
        ids = []
        for i, body in enumerate(["alpha beta", "alpha gamma gamma", "beta delta"]):
            ids.append(await add_source(conn, f"Doc {i}", body, public=True))
            await index_source(conn, ids[-1], f"Doc {i}", body)
    for query in ("alpha", "beta gamma", "delta"):
        assert await _hits(engine, query, MEMORY) == await _hits(engine, query, EXACT)
    async with engine.begin() as conn:
        await index_source(conn, ids[0], "Doc 0", "epsilon epsilon")
        await conn.execute(text("DELETE FROM sources WHERE id = :s"), {"s": ids[2]})
    assert [s for s, _ in await _hits(engine, "alpha", MEMORY)] == [ids[1]]
    assert [s for s, _ in await _hits(engine, "epsilon", MEMORY)] == [ids[0]]
    assert await _hits(engine, "delta", MEMORY) == []
    # Seen inside the transaction that writes it, gone after its rollback.
    async with engine.connect() as conn:
        phantom = await add_source(conn, "Phantom", "zeta", public=True)
        await index_source(conn, phantom, "Phantom", "zeta omega")
        assert [h.source_id for h in await retrieve(conn, "zeta", PUBLIC, 5, params=MEMORY)] == [phantom]
        await conn.rollback()
    async with engine.begin() as conn:
        late = await add_source(conn, "Late", "omega", public=True)
        await index_source(conn, late, "Late", "omega theta")
    assert await _hits(engine, "zeta", MEMORY) == []
    for query in ("omega", "theta", "alpha epsilon", "gamma"):
        assert await _hits(engine, query, MEMORY) == await _hits(engine, query, EXACT)
