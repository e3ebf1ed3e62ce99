"""The evaluation harness: metric definitions, BEIR loading, and a run through the real core."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from privategpt.embeddings import LocalEmbedder
from privategpt.rag.embedding_cache import EmbeddingCache
from privategpt.rag.evaluation import EVAL_MODES, evaluate, evaluate_modes, load_beir, ndcg_at, recall_at, results_table
from privategpt.reranking import HttpReranker
from tests.fixtures.llm_server import fake_llm
from tests.rag.conftest import BACKENDS, RESOURCES


def test_ndcg_follows_trec_eval() -> None:
    judged = {"a": 2, "b": 1, "c": 0}
    assert ndcg_at(["a", "b"], judged) == pytest.approx(1.0)
    dcg = 1 / math.log2(2) + 2 / math.log2(3)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at(["b", "a", "x"], judged) == pytest.approx(dcg / idcg)
    assert ndcg_at(["x"] * 10 + ["a"], judged) == 0.0
    assert ndcg_at(["a"], {"a": 0}) == 0.0


def test_recall() -> None:
    judged = {"a": 1, "b": 1, "c": 0}
    assert recall_at(["a", "c"], judged) == 0.5
    assert recall_at(["x"] * 100 + ["a"], judged) == 0.0


def test_load_beir() -> None:
    dataset = load_beir(RESOURCES / "golden")
    assert len(dataset.corpus) == 12
    assert dataset.corpus["vpn"][0] == "Connecting to the company VPN"
    assert len(dataset.queries) == 10
    assert dataset.qrels["q4"] == {"laptop": 1}


async def test_evaluate_on_sqlite() -> None:
    result = await evaluate(RESOURCES / "golden")
    assert result.backend == "sqlite"
    assert (result.documents, result.queries) == (12, 10)
    assert result.ndcg_at_10 == pytest.approx(1.0)
    assert result.recall_at_100 == pytest.approx(1.0)
    assert "nDCG@10 1.0000" in result.summary()


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="PostgreSQL not selected")
async def test_evaluate_on_postgresql(pg_socket_dir: str) -> None:
    result = await evaluate(RESOURCES / "golden", f"postgresql://postgres:@/postgres?host={pg_socket_dir}")
    assert result.backend == "postgresql"
    assert result.ndcg_at_10 == pytest.approx(1.0)


async def test_every_mode_on_one_index_with_cached_vectors(tmp_path: Path) -> None:
    with fake_llm() as model_server:
        embedder = EmbeddingCache(LocalEmbedder(), tmp_path / "cache")
        reranker = HttpReranker(model_server.url, "test-reranker")
        try:
            results = await evaluate_modes(RESOURCES / "golden", modes=EVAL_MODES, embedder=embedder, reranker=reranker)
        finally:
            await embedder.aclose()
            await reranker.aclose()
        assert [r.mode for r in results] == list(EVAL_MODES)
        scores = {r.mode: r.ndcg_at_10 for r in results}
        assert scores["sparse"] == pytest.approx(1.0)
        assert scores["dense"] > 0.8 and scores["hybrid"] > 0.9
        # Every query's candidates went through the rerank server.
        assert len(model_server.rerank_requests) == 10
        assert "| golden | sqlite | hybrid-rerank |" in results_table(results)

    # Each passage and query was embedded once and is now served from the cache.
    with sqlite3.connect(embedder.path) as db:
        kinds = dict(db.execute("SELECT substr(key, 1, instr(key, ':') - 1), count(*) FROM vectors GROUP BY 1"))
    assert kinds == {"passage": results[0].chunks, "query": 10}
