"""Fusion of the BM25 and dense candidate lists (`privategpt.rag.hybrid.fuse`): order, score scale, weights."""

from __future__ import annotations

import pytest

from privategpt.rag.hybrid import DEFAULT_FUSION, Fusion, _Hit, fuse


def hits(*scored: tuple[int, float]) -> list[_Hit]:
    return [_Hit(chunk_id, score) for chunk_id, score in scored]


SPARSE = hits((1, 12.0), (2, 7.5), (3, 7.0), (4, 6.8), (5, 6.5), (6, 6.1))
DENSE = hits((1, 0.88), (7, 0.86), (3, 0.84), (8, 0.83), (2, 0.80), (9, 0.79))


@pytest.mark.parametrize(
    "fusion",
    [DEFAULT_FUSION, Fusion("minmax", 0.3), Fusion("bm25max", 0.4), Fusion("rrf", 0.5, 60), Fusion("rrf", 0.5, 10)],
    ids=lambda f: f"{f.method}-{f.sparse_weight}",
)
def test_every_fusion_ranks_the_union_best_first_on_a_0_to_1_scale(fusion: Fusion) -> None:
    fused = fuse(SPARSE, DENSE, fusion)
    assert {h.chunk_id for h in fused} == {h.chunk_id for h in SPARSE} | {h.chunk_id for h in DENSE}
    scores = [h.score for h in fused]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    # The chunk at the top of both lists is first, and the fused scale puts the best candidate at 1.0.
    assert fused[0] == _Hit(1, 1.0)


def test_the_default_fusion_is_distribution_based_and_leans_on_the_dense_side() -> None:
    assert DEFAULT_FUSION.method == "distribution"
    assert DEFAULT_FUSION.sparse_weight == pytest.approx(0.4)
    # Two chunks each top one list by the same margin over the same spread of scores: the dense side's wins.
    sparse = hits((1, 9.0), (2, 5.0), (3, 4.0), (4, 3.0))
    dense = hits((2, 0.9), (1, 0.5), (3, 0.4), (4, 0.3))
    assert [h.chunk_id for h in fuse(sparse, dense)][:2] == [2, 1]


def test_a_confident_match_outweighs_a_flat_top_in_the_other_list() -> None:
    """Min-max gives every list's best candidate 1.0; the distribution-based scale keeps how far the best
    stands above the rest, so a BM25 hit far ahead of its list beats a dense hit that barely leads."""
    sparse = hits((1, 30.0), *((i, 3.0 - i / 100) for i in range(2, 22)))
    # Dense scores evenly spread: chunk 2 leads, chunk 1 sits a little below the middle.
    dense_order = [2, *range(3, 16), 1, *range(16, 22)]
    dense = hits(*((chunk_id, 0.800 - rank / 1000) for rank, chunk_id in enumerate(dense_order)))
    assert fuse(sparse, dense, Fusion("minmax", 0.4))[0].chunk_id == 2
    assert fuse(sparse, dense)[0].chunk_id == 1


def test_a_chunk_found_by_one_list_only_scores_nothing_from_the_other() -> None:
    only_sparse = fuse(hits((1, 5.0), (2, 1.0)), [], DEFAULT_FUSION)
    assert [h.chunk_id for h in only_sparse] == [1, 2]
    assert only_sparse[0].score == 1.0
    weights_all_on_bm25 = fuse(SPARSE, DENSE, Fusion("distribution", 1.0))
    dense_only = {7, 8, 9}
    assert all(h.score == 0.0 for h in weights_all_on_bm25 if h.chunk_id in dense_only)


@pytest.mark.parametrize("method", ["distribution", "minmax", "bm25max", "rrf"])
def test_degenerate_lists_fuse_without_dividing_by_zero(method: str) -> None:
    fusion = Fusion(method, 0.4)  # type: ignore[arg-type]
    assert fuse([], [], fusion) == []
    assert fuse(hits((4, 2.0)), [], fusion) == [_Hit(4, 1.0)]
    tied = fuse(hits((3, 1.0), (1, 1.0), (2, 1.0)), hits((2, 0.5), (1, 0.5), (3, 0.5)), fusion)
    if method != "rrf":  # rank-based: list order breaks the tie
        assert tied == [_Hit(1, 1.0), _Hit(2, 1.0), _Hit(3, 1.0)]
