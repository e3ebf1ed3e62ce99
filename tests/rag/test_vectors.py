"""The dense-vector store on SQLite and PostgreSQL: models, writes, and scoped search that is never short.

Vectors are synthetic (seeded random unit vectors): these tests pin the store, not a model.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from privategpt.rag import RetrievalScope, delete_source_chunks, index_prepared_many, prepare_source
from privategpt.rag import vectors as vec
from privategpt.rag.vectors import (
    activate_model,
    chunks_missing_vectors,
    count_missing_vectors,
    list_models,
    register_model,
    search_dense,
    write_vectors,
)
from tests.rag.conftest import add_group, add_source, sqlite_engine

DIM = 16
PUBLIC = RetrievalScope(frozenset(), include_public=True)
# Default thresholds, and 0: every scope "large", so the walk down the whole matrix's scores runs.
PATHS = [pytest.param(vec.SMALL_SCOPE, id="small-scope"), pytest.param(0, id="large-scope")]


@pytest.fixture(autouse=True)
def _narrow_first_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """First rounds as narrow as a 100,000-chunk database's are relative to its scopes, so that tests on
    a few hundred chunks reach the widening."""
    monkeypatch.setattr(vec, "MAX_FIRST_CANDIDATES", 8)


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


async def _sources(
    conn: AsyncConnection, n: int, *, groups: tuple[int, ...] = (), public: bool = False, prefix: str = "doc"
) -> list[str]:
    """n one-chunk sources, indexed; returns their ids."""
    ids = [await add_source(conn, f"{prefix} {i}", f"text {i}", groups=groups, public=public) for i in range(n)]
    await index_prepared_many(
        conn, [(sid, prepare_source(f"{prefix} {i}", f"{prefix} {i} body text.")) for i, sid in enumerate(ids)]
    )
    return ids


async def _chunk_ids(conn: AsyncConnection, source_ids: Sequence[str]) -> list[int]:
    rows = await conn.execute(text("SELECT id, source_id FROM rag_chunks ORDER BY id"))
    wanted = set(source_ids)
    return [int(r[0]) for r in rows if r[1] in wanted]


async def _public_corpus(
    engine: AsyncEngine, rng: np.random.Generator, n: int, *, with_vectors: int
) -> tuple[list[str], vec.EmbeddingModel, list[int]]:
    """n public one-chunk sources, the first `with_vectors` of them embedded."""
    async with engine.begin() as conn:
        ids = await _sources(conn, n, public=True)
        model = await register_model(conn, "mini", DIM)
        chunks = await _chunk_ids(conn, ids)
        await write_vectors(conn, model.id, list(zip(chunks[:with_vectors], _unit(rng, with_vectors), strict=True)))
    return ids, model, chunks


def _truth(ids: list[int], matrix: npt.NDArray[np.float32], q: npt.NDArray[np.float32], k: int) -> list[int]:
    scores = matrix @ q
    return [ids[i] for i in np.lexsort((np.array(ids), -scores))[:k]]


async def test_models_register_activate_retire(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        (sid,) = await _sources(conn, 1, public=True)
        (chunk,) = await _chunk_ids(conn, [sid])
        first = await register_model(conn, "mini", DIM)
        assert first.state == "active"
        assert await register_model(conn, "mini", DIM) == first
        second = await register_model(conn, "e5", 8)
        assert second.state == "building"
        assert [m.name for m in await list_models(conn)] == ["mini", "e5"]
        await write_vectors(conn, first.id, [(chunk, np.ones(DIM))])
        await write_vectors(conn, second.id, [(chunk, np.ones(8))])
        # Both models' vectors live side by side; each search reads its own.
        assert await search_dense(conn, first.id, np.ones(DIM), PUBLIC, 3) == [(chunk, pytest.approx(1.0))]
        assert await search_dense(conn, second.id, np.ones(8), PUBLIC, 3) == [(chunk, pytest.approx(1.0))]

        await activate_model(conn, second.id)
        states = {m.name: m.state for m in await list_models(conn)}
        assert states == {"mini": "retired", "e5": "active"}
        assert await count_missing_vectors(conn, first.id) == 1  # its vectors went with it
        assert await search_dense(conn, first.id, np.ones(DIM), PUBLIC, 3) == []
        with pytest.raises(ValueError, match="retired"):
            await write_vectors(conn, first.id, [(chunk, np.ones(DIM))])
        await activate_model(conn, second.id)  # already active: nothing changes
        again = await register_model(conn, "mini", DIM)
        assert (again.id, again.state) == (first.id, "building")
        # Another dimension of the same name is another model.
        assert (await register_model(conn, "mini", 32)).id not in {first.id, second.id}

        for name, dim in [("", DIM), ("x" * 256, DIM), ("m", 0), ("m", 16_001)]:
            with pytest.raises(ValueError):
                await register_model(conn, name, dim)
        with pytest.raises(ValueError, match="unknown"):
            await activate_model(conn, 999)


async def test_wrong_dimension_and_bad_vectors_are_errors(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        (sid,) = await _sources(conn, 1, public=True)
        (chunk,) = await _chunk_ids(conn, [sid])
        model = await register_model(conn, "mini", DIM)
        for bad in [np.ones(DIM + 1), np.ones((2, DIM)), np.zeros(DIM), np.full(DIM, np.nan)]:
            with pytest.raises(ValueError):
                await write_vectors(conn, model.id, [(chunk, bad)])
        with pytest.raises(ValueError, match="query"):
            await search_dense(conn, model.id, np.ones(DIM - 1), PUBLIC, 3)
        with pytest.raises(ValueError, match="unknown"):
            await write_vectors(conn, 999, [(chunk, np.ones(DIM))])
        assert await count_missing_vectors(conn, model.id) == 1


async def test_missing_vectors_and_writes_skip_vanished_chunks(engine: AsyncEngine) -> None:
    rng = np.random.default_rng(1)
    async with engine.begin() as conn:
        group = await add_group(conn, "g")
        kept = await _sources(conn, 3, groups=(group,), prefix="kept")
        gone = await _sources(conn, 2, public=True, prefix="gone")
        model = await register_model(conn, "mini", DIM)
        assert await count_missing_vectors(conn, model.id) == 5
        assert await count_missing_vectors(conn, model.id, kept) == 3
        assert await count_missing_vectors(conn, model.id, []) == 0
        todo = await chunks_missing_vectors(conn, model.id, source_ids=kept, limit=2)
        assert [c.source_id for c in todo] == kept[:2]
        assert todo[0].source_name == "kept 0" and "kept 0" in todo[0].text
        assert isinstance(todo[0].heading_path, tuple)
        every = await chunks_missing_vectors(conn, model.id)
        # The sources of `gone` are deleted while their chunks are being embedded.
        for sid in gone:
            await conn.execute(text("DELETE FROM sources WHERE id = :id"), {"id": sid})
        written = await write_vectors(
            conn, model.id, [(c.chunk_id, v) for c, v in zip(every, _unit(rng, 5), strict=True)]
        )
        assert written == 3
        assert await count_missing_vectors(conn, model.id) == 0
        # Writing again replaces (an upsert, not a second row).
        assert await write_vectors(conn, model.id, [(every[0].chunk_id, np.ones(DIM))]) == 1
        hits = await search_dense(conn, model.id, np.ones(DIM), RetrievalScope(frozenset({group}), False), 1)
        assert hits == [(every[0].chunk_id, pytest.approx(1.0))]


@pytest.mark.parametrize("small_scope", PATHS)
async def test_tiny_scope_among_many_invisible_chunks_gets_exactly_k(engine: AsyncEngine, small_scope: int) -> None:
    """The visible chunks are the query's worst matches: walking neighbours first and filtering after
    would find none of them."""
    rng = np.random.default_rng(7)
    q = _unit(rng, 1)[0]
    async with engine.begin() as conn:
        mine, other = await add_group(conn, "mine"), await add_group(conn, "other")
        visible = await _sources(conn, 8, groups=(mine,), prefix="mine")
        hidden = await _sources(conn, 300, groups=(other,), prefix="other")
        private_public = await _sources(conn, 20, public=True, prefix="pub")
        model = await register_model(conn, "mini", DIM)
        vis_chunks = await _chunk_ids(conn, visible)
        hid_chunks = await _chunk_ids(conn, hidden + private_public)
        # Hidden chunks sit near the query, visible ones away from it.
        near = _unit(rng, len(hid_chunks)) * 0.3 + q
        near /= np.linalg.norm(near, axis=1, keepdims=True)
        far = _unit(rng, len(vis_chunks)) - q
        far /= np.linalg.norm(far, axis=1, keepdims=True)
        await write_vectors(conn, model.id, [*zip(hid_chunks, near, strict=True), *zip(vis_chunks, far, strict=True)])
    async with engine.connect() as conn:
        for k in (1, 5, 8):
            hits = await search_dense(conn, model.id, q, RetrievalScope(frozenset({mine}), False), k)
            assert [c for c, _ in hits] == _truth(vis_chunks, far.astype(np.float32), q, k)
            assert all(a[1] >= b[1] for a, b in itertools.pairwise(hits))
            assert hits[0][1] == pytest.approx(float(far[vis_chunks.index(hits[0][0])] @ q), abs=1e-5)
        # More than the scope holds: all of it, nothing else.
        hits = await search_dense(conn, model.id, q, RetrievalScope(frozenset({mine}), False), 50)
        assert sorted(c for c, _ in hits) == sorted(vis_chunks)
        everything = RetrievalScope(frozenset({mine, other}), True)
        all_ids = hid_chunks + vis_chunks
        all_vectors = np.vstack([near, far]).astype(np.float32)
        hits = await search_dense(conn, model.id, q, everything, 10, small_scope=small_scope)
        assert [c for c, _ in hits] == _truth(all_ids, all_vectors, q, 10)
        hits = await search_dense(
            conn, model.id, q, RetrievalScope(frozenset({mine}), False), 5, small_scope=small_scope
        )
        assert [c for c, _ in hits] == _truth(vis_chunks, far.astype(np.float32), q, 5)
        assert await search_dense(conn, model.id, q, RetrievalScope(frozenset(), False), 5) == []
        assert await search_dense(conn, model.id, q, everything, 0) == []


@pytest.mark.parametrize("small_scope", PATHS)
async def test_ties_are_broken_by_chunk_id(engine: AsyncEngine, small_scope: int) -> None:
    async with engine.begin() as conn:
        ids = await _sources(conn, 12, public=True)
        model = await register_model(conn, "mini", DIM)
        chunks = await _chunk_ids(conn, ids)
        same = np.ones(DIM, dtype=np.float32)
        await write_vectors(conn, model.id, [(c, same) for c in reversed(chunks)])
        # Within the writing transaction (PostgreSQL: its exact scan), then after it.
        assert [c for c, _ in await search_dense(conn, model.id, same, PUBLIC, 5, small_scope=small_scope)] == chunks[
            :5
        ]
    async with engine.connect() as conn:
        hits = await search_dense(conn, model.id, same, PUBLIC, 5, small_scope=small_scope)
    assert [c for c, _ in hits] == chunks[:5]


@pytest.mark.parametrize("small_scope", PATHS)
async def test_deletes_reingestion_and_regrouping_apply_at_once(engine: AsyncEngine, small_scope: int) -> None:
    rng = np.random.default_rng(3)
    q = _unit(rng, 1)[0]
    async with engine.begin() as conn:
        group = await add_group(conn, "g")
        scope = RetrievalScope(frozenset({group}), False)
        ids = await _sources(conn, 30, groups=(group,))
        model = await register_model(conn, "mini", DIM)
        chunks = await _chunk_ids(conn, ids)
        vectors = _unit(rng, len(chunks))
        await write_vectors(conn, model.id, list(zip(chunks, vectors, strict=True)))

    async def top() -> list[int]:
        async with engine.connect() as conn:
            return [c for c, _ in await search_dense(conn, model.id, q, scope, 3, small_scope=small_scope)]

    best = await top()
    owner = {c: s for c, s in zip(chunks, ids, strict=True)}
    async with engine.begin() as conn:  # delete the best chunk's source
        await conn.execute(text("DELETE FROM sources WHERE id = :id"), {"id": owner[best[0]]})
    assert (await top())[:2] == best[1:3]
    async with engine.begin() as conn:  # take the next one out of the group
        await conn.execute(text("DELETE FROM source_groups WHERE source_id = :id"), {"id": owner[best[1]]})
    assert (await top())[0] == best[2]
    async with engine.begin() as conn:  # the next one goes back to processing
        await conn.execute(text("UPDATE sources SET state = 'processing' WHERE id = :id"), {"id": owner[best[2]]})
    after = await top()
    assert not set(after) & set(best)
    async with engine.begin() as conn:  # re-ingested: new chunk ids, no vector until embedded again
        await delete_source_chunks(conn, owner[after[0]])
        await index_prepared_many(conn, [(owner[after[0]], prepare_source("again", "again body text."))])
        (new_chunk,) = await _chunk_ids(conn, [owner[after[0]]])
    assert after[0] not in await top()
    async with engine.begin() as conn:
        await write_vectors(conn, model.id, [(new_chunk, q)])
    assert (await top())[0] == new_chunk


async def test_index_follows_writes_from_another_engine_incrementally(engine: AsyncEngine) -> None:
    """Another engine on the same database stands in for another server or worker process."""
    rng = np.random.default_rng(5)
    q = _unit(rng, 1)[0]
    ids, model, chunks = await _public_corpus(engine, rng, 40, with_vectors=20)
    async with engine.connect() as conn:
        first = await search_dense(conn, model.id, q, PUBLIC, 5, small_scope=0)
    assert len(first) == 5
    key = (engine.url.render_as_string(hide_password=True), model.id)
    index = vec._INDEXES[key]

    other = _second_engine(engine)
    try:
        async with other.begin() as conn:
            await write_vectors(conn, model.id, [(chunks[30], q)])
            await conn.execute(text("DELETE FROM sources WHERE id = :id"), {"id": ids[chunks.index(first[1][0])]})
        async with engine.connect() as conn:
            hits = await search_dense(conn, model.id, q, PUBLIC, 5, small_scope=0)
        assert hits[0] == (chunks[30], pytest.approx(1.0))
        assert first[1][0] not in [c for c, _ in hits]
        assert len(hits) == 5
    finally:
        await other.dispose()
    # Brought up to date from the change log, not reloaded: the same matrix object, one row more.
    assert vec._INDEXES[key] is index
    assert len(index.rows) == 20


def _second_engine(engine: AsyncEngine) -> AsyncEngine:
    if engine.dialect.name == "sqlite":
        assert engine.url.database is not None
        return sqlite_engine(Path(engine.url.database))
    return create_async_engine(engine.url)


async def test_pruned_log_makes_a_stale_index_reload(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    q = _unit(rng, 1)[0]
    monkeypatch.setattr(vec, "LOG_PRUNE_AT", 10)
    monkeypatch.setattr(vec, "LOG_KEEP", 2)
    ids, model, chunks = await _public_corpus(engine, rng, 30, with_vectors=5)
    async with engine.connect() as conn:
        assert len(await search_dense(conn, model.id, q, PUBLIC, 30, small_scope=0)) == 5
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM sources WHERE id = :id"), {"id": ids[0]})
        await write_vectors(conn, model.id, list(zip(chunks[5:], _unit(rng, 25), strict=True)))
        pruned = (await conn.execute(text("SELECT pruned_through FROM rag_vector_log_state"))).scalar_one()
        assert pruned > 0
    async with engine.connect() as conn:
        hits = await search_dense(conn, model.id, q, PUBLIC, 30, small_scope=0)
    assert sorted(c for c, _ in hits) == chunks[1:]


async def test_concurrent_first_searches_agree(engine: AsyncEngine) -> None:
    """A server's first queries arrive together; they share one load of the index."""
    rng = np.random.default_rng(11)
    queries = _unit(rng, 4)
    _, model, _ = await _public_corpus(engine, rng, 30, with_vectors=30)

    async def search(q: npt.NDArray[np.float32], small_scope: int) -> list[tuple[int, float]]:
        async with engine.connect() as conn:
            return await search_dense(conn, model.id, q, PUBLIC, 5, small_scope=small_scope)

    together = await asyncio.gather(*(search(q, 0) for q in queries))
    one_by_one = [await search(q, vec.SMALL_SCOPE) for q in queries]
    assert [[c for c, _ in r] for r in together] == [[c for c, _ in r] for r in one_by_one]


async def test_search_started_before_rows_are_reused_stays_in_scope(engine: AsyncEngine) -> None:
    """A scope's rows are scored in a worker thread after its sources are listed; by then the matrix may
    have been brought up to date and a deleted chunk's row handed to a chunk of another source."""
    rng = np.random.default_rng(13)
    q = _unit(rng, 1)[0]
    async with engine.begin() as conn:
        mine, other = await add_group(conn, "mine"), await add_group(conn, "other")
        visible = await _sources(conn, 6, groups=(mine,), prefix="mine")
        hidden = await _sources(conn, 6, groups=(other,), prefix="other")
        model = await register_model(conn, "mini", DIM)
        vis_chunks, hid_chunks = await _chunk_ids(conn, visible), await _chunk_ids(conn, hidden)
        await write_vectors(conn, model.id, list(zip(vis_chunks, _unit(rng, len(vis_chunks)), strict=True)))
    scope = RetrievalScope(frozenset({mine}), False)
    async with engine.connect() as conn:
        assert len(await search_dense(conn, model.id, q, scope, 3)) == 3
    index = vec._INDEXES[(engine.url.render_as_string(hide_password=True), model.id)]
    # The scope as the search listed it: its sources' keys.
    listed = np.zeros(len(index.source_names), dtype=bool)
    listed[[index.source_keys[s] for s in visible]] = True
    async with engine.begin() as conn:  # half the visible chunks go; hidden ones take their rows, nearest to q
        for source_id in visible[:3]:
            await conn.execute(text("DELETE FROM sources WHERE id = :id"), {"id": source_id})
        await write_vectors(conn, model.id, [(c, q) for c in hid_chunks])
    async with engine.connect() as conn:  # another request brings the matrix up to date
        await search_dense(conn, model.id, q, RetrievalScope(frozenset({other}), False), 1)
    assert set(index.rows) == set(vis_chunks[3:]) | set(hid_chunks)
    hits = vec._score_rows(index, q, listed, 10)
    assert sorted(c for c, _ in hits) == sorted(vis_chunks[3:])


async def test_transactions_committing_out_of_order_are_all_applied(engine: AsyncEngine) -> None:
    """PostgreSQL hands out log ids before commit: a transaction that logged first and commits last must
    still reach a process whose matrix was brought up to date in between (an id watermark would skip it).
    Its own search meanwhile sees its uncommitted vectors, and nobody else's search does."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: its log ids are in commit order")
    rng = np.random.default_rng(17)
    q = _unit(rng, 1)[0]
    _, model, chunks = await _public_corpus(engine, rng, 12, with_vectors=8)
    async with engine.connect() as conn:
        assert len(await search_dense(conn, model.id, q, PUBLIC, 20)) == 8
    other = _second_engine(engine)
    try:
        async with engine.connect() as slow, other.connect() as fast:
            slow_tx = await slow.begin()
            await write_vectors(slow, model.id, [(chunks[8], q)])
            mine = await search_dense(slow, model.id, q, PUBLIC, 1)
            assert mine == [(chunks[8], pytest.approx(1.0))]
            async with fast.begin():
                await write_vectors(fast, model.id, [(chunks[9], -q)])
            async with engine.connect() as conn:
                hits = [c for c, _ in await search_dense(conn, model.id, q, PUBLIC, 20)]
            assert chunks[9] in hits and chunks[8] not in hits
            await slow_tx.commit()
        async with engine.connect() as conn:
            hits = await search_dense(conn, model.id, q, PUBLIC, 20)
        assert hits[0] == (chunks[8], pytest.approx(1.0)) and len(hits) == 10
    finally:
        await other.dispose()


async def test_prune_while_a_transaction_stays_open_reloads_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction left open holds PostgreSQL's xmin back: a process must not take every later prune
    point as one it may have missed, or each query reloads every vector until that transaction ends."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite's log positions are ids, not held back by open transactions")
    rng = np.random.default_rng(19)
    q = _unit(rng, 1)[0]
    monkeypatch.setattr(vec, "LOG_PRUNE_AT", 10)
    monkeypatch.setattr(vec, "LOG_KEEP", 2)
    _, model, chunks = await _public_corpus(engine, rng, 30, with_vectors=5)
    key = (engine.url.render_as_string(hide_password=True), model.id)
    other = _second_engine(engine)
    try:
        async with other.connect() as idle:
            await idle.begin()
            await idle.execute(text("SELECT pg_current_xact_id()"))  # an xid, so xmin stays at it
            async with engine.connect() as conn:
                assert len(await search_dense(conn, model.id, q, PUBLIC, 30)) == 5
            async with engine.begin() as conn:
                await write_vectors(conn, model.id, list(zip(chunks[5:], _unit(rng, 25), strict=True)))
            async with engine.connect() as conn:
                assert len(await search_dense(conn, model.id, q, PUBLIC, 30)) == 30  # reloaded: pruned
            reloaded = vec._INDEXES[key]
            async with engine.connect() as conn:
                assert len(await search_dense(conn, model.id, q, PUBLIC, 30)) == 30
            assert vec._INDEXES[key] is reloaded
    finally:
        await other.dispose()


@pytest.mark.parametrize("rows", [1_000, vec._SPLIT_MIN_ROWS - 1, vec._SPLIT_MIN_ROWS, 3 * vec._SPLIT_MIN_ROWS + 517])
def test_scoring_the_whole_matrix_in_two_halves_gives_every_row_its_product(rows: int) -> None:
    generator = np.random.default_rng(rows)
    matrix = generator.standard_normal((rows + 300, 16)).astype(np.float32)  # rows past `count` are unused
    q = generator.standard_normal(16).astype(np.float32)
    scores = vec._scores(matrix, q, None, rows)
    assert scores.shape == (rows,)
    np.testing.assert_allclose(scores, matrix[:rows] @ q, rtol=1e-5, atol=1e-5)
    gathered = np.arange(0, rows, 3)
    np.testing.assert_allclose(
        vec._scores(matrix, q, gathered, len(gathered)), matrix[gathered] @ q, rtol=1e-5, atol=1e-5
    )
