"""Which fusion of BM25 and dense scores: measured on the relevance-judged data sets, one index per data set.

Runs the evaluation once per data set with sparse, dense and hybrid retrieval, the hybrid mode once per
fusion below, and prints one Markdown table. Vectors come from the evaluation's on-disk cache (the first
run embeds every passage with the configured embedder: minutes per thousand on the bundled CPU model).

    PGPT_EMBEDDING_BACKEND=local python bench/bench_fusion.py ../shared/data/xquad/en:en ../shared/data/xquad/de:de
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from privategpt.config import load_settings
from privategpt.embeddings import open_embedder
from privategpt.rag.embedding_cache import EmbeddingCache
from privategpt.rag.evaluation import EvalResult, evaluate_modes, results_table
from privategpt.rag.hybrid import Fusion

FUSIONS = (
    Fusion("distribution", 0.4),
    Fusion("distribution", 0.3),
    Fusion("distribution", 0.5),
    Fusion("minmax", 0.3),
    Fusion("minmax", 0.4),
    Fusion("minmax", 0.5),
    Fusion("bm25max", 0.4),
    Fusion("rrf", 0.5, 60),
    Fusion("rrf", 0.5, 10),
)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", help="DIR[:LANGUAGE] (language of the analyser, default en)")
    parser.add_argument("--cache-dir", default="data/eval-cache")
    args = parser.parse_args()
    settings = load_settings()
    model = await open_embedder(settings)
    if model is None:
        raise SystemExit("set PGPT_EMBEDDING_BACKEND (local or openai)")
    embedder = EmbeddingCache(model, Path(args.cache_dir))
    results: list[EvalResult] = []
    try:
        for spec in args.datasets:
            directory, _, language = spec.partition(":")
            results += await evaluate_modes(
                directory, modes=("sparse", "dense", "hybrid"), embedder=embedder, language=language or "en",
                fusions=FUSIONS,
            )  # fmt: skip
    finally:
        await embedder.aclose()
    print(results_table(results))


if __name__ == "__main__":
    asyncio.run(main())
