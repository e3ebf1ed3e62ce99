"""The evaluation harness: metric definitions, BEIR loading, and a run through the real core."""

from __future__ import annotations

import math

import pytest

from privategpt.rag.evaluation import evaluate, load_beir, ndcg_at, recall_at
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
