"""In-memory BM25 postings (`rag.sparse_index`): building the sorted base by counting, and merging."""

from __future__ import annotations

import random

import numpy as np
import pytest

from privategpt.rag import sparse_index
from privategpt.rag.sparse_index import PostingsBuilder, QueryTerm, SparseIndex, _sorted_by_term
from privategpt.rag.store import encode_terms


def _chunks(rng: random.Random, first_id: int, n: int, vocabulary: int) -> list[tuple[int, str, int, bytes]]:
    out = []
    for chunk_id in range(first_id, first_id + n):
        terms = {rng.randrange(vocabulary): rng.randint(1, 5) for _ in range(rng.randint(0, 40))}
        out.append((chunk_id, f"source {chunk_id % 7}", sum(terms.values()), encode_terms(list(terms.items()))))
    return out


def _parts(rng: np.random.Generator, sizes: list[int], vocabulary: int) -> list[sparse_index.Part]:
    parts, first = [], 0
    for n in sizes:
        rows = np.repeat(np.arange(first, first + n, dtype=np.int32), rng.integers(0, 30, n))
        first += n
        terms = rng.integers(0, vocabulary, len(rows)).astype(np.uint32)
        parts.append((terms, rows, rng.integers(1, 9, len(rows)).astype(np.uint16)))
    return parts


def test_counting_build_equals_a_stable_sort() -> None:
    parts = _parts(np.random.default_rng(7), [0, 5, 1000, 1, 3000], 500)
    builder = PostingsBuilder()
    for terms, _, _ in parts:
        builder.count(terms)
    builder.allocate()
    for part in parts:
        builder.place(*part)
    built = builder.finish()
    for got, want in zip(built, _sorted_by_term(list(parts)), strict=True):
        assert got.dtype == want.dtype
        assert np.array_equal(got, want)


def test_huge_term_ids_are_sorted_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparse_index, "_MAX_COUNTED_TERM_ID", 100)
    builder = PostingsBuilder()
    builder.count(np.array([3, 250], dtype=np.uint32))
    assert not builder.dense


@pytest.mark.parametrize("max_counted", [sparse_index._MAX_COUNTED_TERM_ID, 10])
def test_merge_keeps_every_score(monkeypatch: pytest.MonkeyPatch, max_counted: int) -> None:
    """Scores after merging the delta and dropping deleted chunks equal those before, chunk for chunk."""
    monkeypatch.setattr(sparse_index, "_MAX_COUNTED_TERM_ID", max_counted)
    monkeypatch.setattr(sparse_index, "_SLICE", 257)  # several slices even on this small index
    rng = random.Random(3)
    index = SparseIndex("test")
    index.apply(_chunks(rng, 1, 300, 60))
    index.merge()
    index.apply(_chunks(rng, 301, 200, 80))
    index.apply([(chunk_id, None, None, None) for chunk_id in rng.sample(range(1, 501), 120)])
    queries = [[QueryTerm(t, 1.0 + t / 10) for t in rng.sample(range(80), 4)] for _ in range(20)]

    def scores() -> list[dict[int, float]]:
        return [dict(zip(*(a.tolist() for a in index.score(q, 20.0, 0.9, 0.4)[::2]), strict=True)) for q in queries]

    before = scores()
    assert index.dead and len(index.delta_rows)
    index.merge()
    assert index.dead == 0 and not len(index.delta_rows) and index.size == 380
    assert scores() == before
    assert any(before)
