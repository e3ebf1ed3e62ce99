"""Client CPU per request to a model server with many requests in flight: the OpenAI-compatible embedder's
`embed_query` (and the HTTP reranker's `rerank`), as fifty questions at once would call them.

The server is the test suite's fake one (OpenAI-compatible `/embeddings`, Cohere-style `/rerank`), in a
process of its own, answering after `--delay` seconds so that every request of a round is in flight at
once. What is measured is this process's CPU time (user + system) per request: the client's work alone.

    python bench/bench_model_clients.py                        # 50 at once, 5 rounds, each kind
    python bench/bench_model_clients.py --concurrency 100 --rounds 3

Compare two versions of the code by running this with PYTHONPATH pointing at each checkout in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from bench_chat import fake_llm


async def cpu_per_request(call: Callable[[int], Awaitable[object]], concurrency: int, rounds: int) -> dict[str, float]:
    await asyncio.gather(*(call(i) for i in range(concurrency)))  # warm-up: connections opened
    cpu: list[float] = []
    wall: list[float] = []
    for r in range(rounds):
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(call(r * concurrency + i) for i in range(concurrency)))
        wall.append(time.perf_counter() - started)
        cpu.append((time.process_time() - cpu_started) / concurrency)
    return {
        "cpu_ms_per_request": round(statistics.median(cpu) * 1000, 2),
        "round_wall_s": round(statistics.median(wall), 3),
    }


async def run(url: str, concurrency: int, rounds: int) -> dict[str, object]:
    from privategpt.embeddings.openai_compatible import OpenAICompatibleEmbedder
    from privategpt.reranking import HttpReranker

    embedder = OpenAICompatibleEmbedder(url, "bench-embedder", dimension=384)
    reranker = HttpReranker(url, "bench-reranker")
    passages = [f"passage {i} about cell biology and protein" for i in range(30)]
    try:
        return {
            "code": os.path.dirname(os.path.dirname(sys.modules["privategpt"].__file__ or "")),
            "concurrency": concurrency,
            "embed_query": await cpu_per_request(
                lambda i: embedder.embed_query(f"question {i} about cell biology"), concurrency, rounds
            ),
            "rerank": await cpu_per_request(
                lambda i: reranker.rerank(f"question {i} about cell biology", passages), concurrency, rounds
            ),
        }
    finally:
        await embedder.aclose()
        await reranker.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the server waits before each answer")
    args = parser.parse_args()
    with fake_llm(0.0, embedding_delay=args.delay, embedding_dimension=384) as url:
        print(json.dumps(asyncio.run(run(url, args.concurrency, args.rounds))))


if __name__ == "__main__":
    main()
