"""Ingestion through the API (issue 4): post the SciFact abstracts as sources and time until all are searchable.

Starts `privategpt serve` (embedded worker, default settings) on SQLite or PostgreSQL, posts every abstract of
`corpus.jsonl.gz` with N concurrent clients, and meanwhile probes `GET /groups` every 50 ms as another user
would. Reports the posting time, the time until the last source is `vectorized`, and the probe's latencies.

    python bench/bench_ingest.py ../shared/data/scifact --databases sqlite --clients 8

Targets: all 5,183 abstracts `vectorized` within 60 s on SQLite; `GET /groups` p99 < 100 ms meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_api import ADMIN_EMAIL, ADMIN_PASSWORD, server

GROUP = "scifact"


def load_corpus(dataset: Path, limit: int | None) -> list[tuple[str, str]]:
    path = dataset / "corpus.jsonl.gz"
    opener = gzip.open if path.exists() else open
    path = path if path.exists() else dataset / "corpus.jsonl"
    documents = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            title = (row.get("title") or row["_id"]).strip()
            documents.append((title[:255], f"# {title}\n\n{row['text']}"))
            if limit and len(documents) >= limit:
                break
    return documents


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def run(base: str, documents: list[tuple[str, str]], clients: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base + "/api/v1", timeout=120) as api:
        login = await api.post("/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        auth = {"Authorization": f"Bearer {login.json()['data']['token']}"}
        (await api.post("/groups", json={"groupName": GROUP}, headers=auth)).raise_for_status()

        probes: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                (await api.get("/groups", headers=auth)).raise_for_status()
                probes.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.05)

        queue = list(reversed(documents))

        async def poster() -> None:
            while queue:
                name, content = queue.pop()
                response = await api.post(
                    "/sources", json={"name": name, "groups": [GROUP], "content": content}, headers=auth
                )
                response.raise_for_status()

        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(clients)))
        posted = time.perf_counter() - started
        while True:
            page = await api.get("/sources", params={"state": "processing", "perPage": 1}, headers=auth)
            if page.json()["data"]["total"] == 0:
                break
            await asyncio.sleep(0.2)
        searchable = time.perf_counter() - started
        done.set()
        await prober
        errors = await api.get("/sources", params={"state": "error", "perPage": 1}, headers=auth)
        return {
            "documents": len(documents),
            "posted_s": posted,
            "all_vectorized_s": searchable,
            "errors": errors.json()["data"]["total"],
            "probe_p50_ms": statistics.median(probes),
            "probe_p99_ms": percentile(probes, 0.99),
            "probes": len(probes),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="a BEIR directory, e.g. ../shared/data/scifact")
    parser.add_argument("--databases", default="sqlite")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="only the first N documents")
    args = parser.parse_args()
    documents = load_corpus(args.dataset, args.limit)
    print("| database | documents | clients | posted in | all vectorized after | errors | GET /groups p50 / p99 |")
    print("|---|---|---|---|---|---|---|")
    for database in args.databases.split(","):
        with tempfile.TemporaryDirectory(prefix="pgpt-ingest-") as tmp, server(database, Path(tmp), 1) as base:
            r = asyncio.run(run(base, documents, args.clients))
        print(
            f"| {database} | {r['documents']:.0f} | {args.clients} | {r['posted_s']:.1f} s | "
            f"{r['all_vectorized_s']:.1f} s | {r['errors']:.0f} | "
            f"{r['probe_p50_ms']:.1f} / {r['probe_p99_ms']:.1f} ms |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
