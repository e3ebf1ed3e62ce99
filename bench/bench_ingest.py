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
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_api import ADMIN_EMAIL, ADMIN_PASSWORD, server

GROUP = "scifact"
# Seconds after the last source is searchable over which the embedding model's CPU is measured.
RESUME_WINDOW_S = 5.0


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


class Poster:
    """A keep-alive HTTP/1.1 connection that posts JSON, written on asyncio streams.

    The posting clients share this 2-core machine with the server: httpx spent about 3.5 ms of CPU per
    request, a quarter of what the whole ingestion cost, and CPU the server then did not get. This spends
    a few tenths of a millisecond. Probes and polls still go through httpx.
    """

    def __init__(self, base: str, token: str) -> None:
        url = httpx.URL(base)
        self.host, self.port = url.host, url.port or 80
        self.prefix = url.path.rstrip("/")
        self.token = token
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, payload: object) -> None:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        body = json.dumps(payload).encode()
        head = (
            f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(headers[0].split()[1])
        length = next(int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:"))
        reply = await reader.readexactly(length)
        if status >= 300:
            raise RuntimeError(f"POST {path}: {status} {reply[:200]!r}")

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


def server_cpu_seconds() -> tuple[float, float]:
    """CPU seconds of the server process (a child of this one) so far: (nice 0 threads, lower-priority threads).

    The lower-priority ones are the local embedding model's (nice +10); wall-clock figures on this shared
    machine are noisy, CPU seconds much less so.
    """
    tick = os.sysconf("SC_CLK_TCK")
    normal = background = 0.0
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    for child in children:
        for task in Path(f"/proc/{child}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / tick
            if int(fields[16]) > 0:
                background += seconds
            else:
                normal += seconds
    return normal, background


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def run(base: str, documents: list[tuple[str, str]], clients: int, httpx_posts: bool) -> dict[str, float]:
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
            client = Poster(base + "/api/v1", login.json()["data"]["token"])
            try:
                while queue:
                    name, content = queue.pop()
                    source = {"name": name, "groups": [GROUP], "content": content}
                    if httpx_posts:
                        (await api.post("/sources", json=source, headers=auth)).raise_for_status()
                    else:
                        await client.post("/sources", source)
            finally:
                client.close()

        prober = asyncio.create_task(probe())
        cpu_before, background_before = server_cpu_seconds()
        client_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(clients)))
        posted = time.perf_counter() - started
        while True:
            page = await api.get("/sources", params={"state": "processing", "perPage": 1}, headers=auth)
            if page.json()["data"]["total"] == 0:
                break
            await asyncio.sleep(0.2)
        searchable = time.perf_counter() - started
        cpu_after, background_after = server_cpu_seconds()
        client_cpu = time.process_time() - client_before
        done.set()
        await prober
        # The embedding model's share once ingestion is over: it waits while sources are indexed (nice +10
        # alone left it competing for the 2 cores), and must resume at once after.
        await asyncio.sleep(RESUME_WINDOW_S)
        resumed = server_cpu_seconds()[1] - background_after
        errors = await api.get("/sources", params={"state": "error", "perPage": 1}, headers=auth)
        return {
            "documents": len(documents),
            "posted_s": posted,
            "all_vectorized_s": searchable,
            "errors": errors.json()["data"]["total"],
            "probe_p50_ms": statistics.median(probes),
            "probe_p99_ms": percentile(probes, 0.99),
            "probes": len(probes),
            "server_cpu_s": cpu_after - cpu_before,
            "embedding_cpu_s": background_after - background_before,
            "embedding_cpu_after_s": resumed,
            "client_cpu_s": client_cpu,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="a BEIR directory, e.g. ../shared/data/scifact")
    parser.add_argument("--databases", default="sqlite")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="only the first N documents")
    parser.add_argument(
        "--embedding",
        default="default",
        choices=["default", "local", "none"],
        help="PGPT_EMBEDDING_BACKEND of the server (default: the server's own default)",
    )
    parser.add_argument(
        "--httpx-posts", action="store_true", help="post through httpx (as before 2026-11-23 09:00), not `Poster`"
    )
    parser.add_argument(
        "--code", type=Path, default=None, help="serve this checkout instead (e.g. a `git worktree` of an older commit)"
    )
    args = parser.parse_args()
    documents = load_corpus(args.dataset, args.limit)
    settings = {} if args.embedding == "default" else {"PGPT_EMBEDDING_BACKEND": args.embedding}
    import os as _o

    settings.update({k[6:]: v for k, v in _o.environ.items() if k.startswith("BENCH_PGPT_")})
    print(
        "| database | embedding | documents | clients | posted in | all vectorized after | errors "
        "| GET /groups p50 / p99 | server CPU (embedding) | embedding CPU in the next 5 s | client CPU | load average |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for database in args.databases.split(","):
        with (
            tempfile.TemporaryDirectory(prefix="pgpt-ingest-") as tmp,
            server(database, Path(tmp), 1, code=args.code, settings=settings) as base,
        ):
            r = asyncio.run(run(base, documents, args.clients, args.httpx_posts))
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"| {database} | {args.embedding} | {r['documents']:.0f} | {args.clients} | {r['posted_s']:.1f} s | "
            f"{r['all_vectorized_s']:.1f} s | {r['errors']:.0f} | "
            f"{r['probe_p50_ms']:.1f} / {r['probe_p99_ms']:.1f} ms | "
            f"{r['server_cpu_s']:.1f} s ({r['embedding_cpu_s']:.1f} s) | {r['embedding_cpu_after_s']:.1f} s | "
            f"{r['client_cpu_s']:.1f} s | {load} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
