"""The two chat targets of issue 5, against a real `privategpt serve` process and a fake OpenAI-compatible LLM.

* `concurrency`: N users (default 50) ask at once while the LLM takes D seconds (default 2) per answer.
  Target: all answered within 1.3 x D wall time, and `GET /groups` p99 < 100 ms meanwhile.
* `overhead`: a zero-delay LLM, 100,000 chunks indexed; sequential questions, for a user who may see 1 %
  of the documents and one who may see all of them. Target: p50 < 50 ms, p95 < 150 ms. New chats, then the
  same questions as continued ones (`continued_*`: each chat continued FOLLOW_UPS times, with its history).

    python bench/bench_chat.py concurrency --databases sqlite,postgresql
    python bench/bench_chat.py overhead --databases sqlite,postgresql --chunks 100000

The LLM is the test suite's fake server (tests/fixtures/llm_server.py), run in a process of its own. The
server runs with its defaults, hybrid retrieval on the bundled local embedder included (`--embedding none`:
BM25 only, to tell the embedder's share from the rest; `--workers N`: N server processes).

Corpora are built once per database under --workdir (SciFact sentences, 10 sections per source, 100
groups) and reused by later runs; --rebuild starts over. Every chunk gets a synthetic vector of the local
model (see `_add_vectors`): questions are embedded for real and searched against as many vectors as there
are chunks, and no embedding runs in the background while chats are measured.

`concurrency` asks one question first (loading the embedding model and the vectors is start-up, not
answering), then `--rounds` rounds of N questions that differ from user to user and from round to round.
Besides the wall time of each round it reports the median answer time, `GET /groups` p50/p99, the server's
CPU time per question (all its threads and worker processes) and the load generator's own CPU time per
round: on a small machine the clients take CPU from the server too. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_vectors import _vectors  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

from privategpt.config import to_async_url  # noqa: E402
from privategpt.embeddings.local import DIMENSION, MODEL_NAME  # noqa: E402
from privategpt.rag import index_prepared_many, prepare_source  # noqa: E402
from privategpt.rag.vectors import activate_model, register_model, write_vectors  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password"
GROUPS = 100
SECTIONS_PER_SOURCE = 10
SECTION_WORDS = 180
# Marks a finished corpus (chunks and their vectors); older corpora, without vectors, are built again.
READY = "ready-with-vectors"
# Follow-up questions per continued chat in `overhead`.
FOLLOW_UPS = 4


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- servers --------------------------------------------------------------------------------------


def _unused_port() -> int:
    """A loopback port nobody listens on, from the kernel's ephemeral range: test suites running beside the
    benchmark take theirs from fixed slices (tests/fixtures/servers.py), and one of them took a port the
    benchmark's server was about to bind."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def fake_llm(delay: float, **attributes: float) -> Iterator[str]:
    """The test suite's fake LLM in a process of its own, answering after `delay` seconds; yields its URL.
    `attributes` set more of its knobs (`embedding_delay=0.5`, ...).

    In this process it would share the interpreter lock with the load generator, and its answers would
    wait for the clients' work (and the clients for its), which is not what a real LLM server does.
    """
    code = (
        "import sys, time\n"
        "from tests.fixtures.llm_server import FakeLLM\n"
        "llm = FakeLLM()\n"
        f"llm.delay = {delay!r}\n"
        + "".join(f"llm.{name} = {value!r}\n" for name, value in attributes.items())
        + "llm.start()\n"
        "print(llm.url, flush=True)\n"
        "sys.stdin.read()\n"
        "llm.stop()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def database_url(database: str, workdir: Path) -> str:
    if database == "sqlite":
        return f"sqlite:///{workdir / 'sqlite' / 'privategpt.db'}"
    import pgserver

    pg = pgserver.get_server(str(workdir / "pg"), cleanup_mode=None)
    if "bench" not in pg.psql("SELECT datname FROM pg_database;"):
        pg.psql('CREATE DATABASE "bench";')
    return f"postgresql://postgres@/bench?host={workdir / 'pg'}"


@dataclass(frozen=True)
class Server:
    api: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server process and its worker processes (Linux)."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            if stat.parent.name == str(self.pid) or fields[1] == str(self.pid):
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def serve(url: str, workdir: Path, llm_url: str, embedding: str = "local", workers: int = 1) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPT_")}
    env.update(
        PGPT_EMBEDDING_BACKEND=embedding,
        PGPT_WORKERS=str(workers),
        PGPT_DATA_DIR=str(workdir / "data"),
        PGPT_DATABASE_URL=url,
        PGPT_ADMIN_EMAIL=ADMIN_EMAIL,
        PGPT_ADMIN_PASSWORD=ADMIN_PASSWORD,
        PGPT_LLM_BASE_URL=llm_url,
        PGPT_LLM_MODEL="bench-model",
        PGPT_LOG_LEVEL="warning",
        # Only user creation during set-up hashes passwords; the measured calls authenticate by token.
        PGPT_ARGON2_TIME_COST="1",
        PGPT_ARGON2_MEMORY_KIB="1024",
        PGPT_ARGON2_PARALLELISM="1",
    )
    port = _unused_port()
    log_path = workdir / "server.log"
    log = open(log_path, "ab")  # noqa: SIM115 (closed with the server)
    process = subprocess.Popen(
        [sys.executable, "-m", "privategpt.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                # Ours once it has printed its address (after migrating) and stays up: another server that
                # held the port would answer /health while this one fails to bind and exits.
                if f":{port}/api/v1" in log_path.read_text() and httpx.get(base + "/health").status_code == 200:
                    time.sleep(1)
                    if process.poll() is None:
                        break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"server did not start (see {log_path})")
            time.sleep(0.2)
        yield Server(base + "/api/v1", process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def login(api: str, email: str, password: str) -> str:
    response = httpx.post(f"{api}/login", json={"email": email, "password": password})
    response.raise_for_status()
    token: str = response.json()["data"]["token"]
    return token


def create_user(api: str, admin: str, email: str, groups: list[str]) -> str:
    password = "bench-user-password"
    response = httpx.post(
        f"{api}/users",
        json={"name": email, "email": email, "password": password, "groups": groups},
        headers={"Authorization": f"Bearer {admin}"},
    )
    if response.status_code != 409:
        response.raise_for_status()
    return login(api, email, password)


# -- concurrency ----------------------------------------------------------------------------------


@dataclass
class Round:
    wall: float  # from the first question sent to the last answer received
    answers: list[float]  # each question's own latency
    probes: list[float]  # GET /groups latencies meanwhile
    server_cpu: float  # CPU seconds the server used during the round
    client_cpu: float  # CPU seconds this process (the load generator) used during the round


async def _concurrent_round(server: Server, tokens: list[str], groups: list[str], number: int) -> Round:
    limits = httpx.Limits(max_connections=len(tokens) + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        done = asyncio.Event()
        probes: list[float] = []

        async def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                response = await client.get(f"{server.api}/groups", headers={"Authorization": f"Bearer {tokens[0]}"})
                response.raise_for_status()
                probes.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

        async def ask(token: str, i: int) -> float:
            started = time.perf_counter()
            # Questions differ from user to user and from round to round: no answer can come from a cache.
            response = await client.post(
                f"{server.api}/chats",
                json={"question": f"What do we know about cell biology, question {number}.{i}?", "groups": groups},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 200, response.text
            return time.perf_counter() - started

        server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        answers = await asyncio.gather(*(ask(t, i) for i, t in enumerate(tokens)))
        wall = time.perf_counter() - started
        done.set()
        await prober
        server_cpu, client_cpu = server.cpu_seconds() - server_cpu, time.process_time() - client_cpu
    return Round(wall, list(answers), probes, server_cpu, client_cpu)


def concurrency(database: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir) / f"concurrency-{database}"
    try:
        with fake_llm(args.llm_delay) as llm_url:
            url = prepared_database(database, workdir, 2_000, llm_url, rebuild=args.rebuild)
            with serve(url, workdir, llm_url, args.embedding, args.workers) as server:
                admin = login(server.api, ADMIN_EMAIL, ADMIN_PASSWORD)
                # Each user may see 10 % of the corpus, so every question retrieves passages.
                groups = [f"group {g}" for g in range(10)]
                tokens = [create_user(server.api, admin, f"u{i}@bench.example", groups) for i in range(args.users)]
                # One question first: loading the embedding model and the vectors is the server's start-up,
                # not a cost of answering.
                asyncio.run(_concurrent_round(server, tokens[:1], groups, 0))
                rounds = [asyncio.run(_concurrent_round(server, tokens, groups, n + 1)) for n in range(args.rounds)]
    finally:
        if database == "postgresql":
            _stop_pg(workdir)
    return {
        "database": database,
        "embedding": args.embedding,
        "users": args.users,
        "llm_delay": args.llm_delay,
        "walls": [round(r.wall, 2) for r in rounds],
        "worst_wall": round(max(r.wall for r in rounds), 2),
        "answer_p50": round(statistics.median(a for r in rounds for a in r.answers), 2),
        "groups_p99_ms": round(max(percentile(r.probes, 99) for r in rounds) * 1000, 1),
        "groups_p50_ms": round(statistics.median(p for r in rounds for p in r.probes) * 1000, 1),
        "probes": sum(len(r.probes) for r in rounds),
        "server_cpu_ms_per_question": round(statistics.mean(r.server_cpu for r in rounds) / args.users * 1000, 1),
        "client_cpu_s_per_round": round(statistics.mean(r.client_cpu for r in rounds), 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# -- overhead -------------------------------------------------------------------------------------


def _scifact_sentences() -> tuple[list[str], list[list[str]]]:
    titles, abstracts = [], []
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", doc["text"]) if s.strip()]
            if sentences:
                titles.append(doc["title"])
                abstracts.append(sentences)
    return titles, abstracts


def _documents(n_sources: int) -> list[tuple[str, str, int]]:
    rng = random.Random(5)
    titles, abstracts = _scifact_sentences()
    docs = []
    for s in range(n_sources):
        parts = [f"# {titles[rng.randrange(len(titles))]}"]
        for _ in range(SECTIONS_PER_SOURCE):
            a = rng.randrange(len(abstracts))
            body, words, i = [], 0, rng.randrange(len(abstracts[a]))
            while words < SECTION_WORDS:
                sentence = abstracts[a][i % len(abstracts[a])]
                body.append(sentence)
                words += len(sentence.split())
                i += 1
            parts.append(f"## {titles[a]}\n\n{' '.join(body)}")
        docs.append((parts[0][2:][:200], "\n\n".join(parts), s % GROUPS))  # names are VARCHAR(255)
    return docs


async def _load_corpus(url: str, n_chunks: int) -> int:
    """Insert groups, sources and their index rows straight into the migrated database."""
    engine = create_async_engine(to_async_url(url))
    now = datetime.now(UTC).replace(tzinfo=None) if url.startswith("sqlite") else datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO groups (name, name_key, created_at) VALUES (:n, :k, :t)"),
            [{"n": f"group {g}", "k": f"group {g}", "t": now} for g in range(GROUPS)],
        )
        ids = {row[1]: row[0] for row in await conn.execute(text("SELECT id, name FROM groups"))}
    docs = _documents(n_chunks // SECTIONS_PER_SOURCE)
    total, started = 0, time.perf_counter()
    for start in range(0, len(docs), 500):
        batch = docs[start : start + 500]
        source_ids = [str(uuid.uuid4()) for _ in batch]
        prepared = [(sid, prepare_source(name, md)) for sid, (name, md, _) in zip(source_ids, batch, strict=True)]
        total += sum(len(p.chunks) for _, p in prepared)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO sources (id, name, content, is_public, state, created_at, updated_at)"
                    " VALUES (:id, :n, :c, FALSE, 'vectorized', :t, :t)"
                ),
                [{"id": sid, "n": n, "c": md, "t": now} for sid, (n, md, _) in zip(source_ids, batch, strict=True)],
            )
            await conn.execute(
                text("INSERT INTO source_groups (source_id, group_id) VALUES (:s, :g)"),
                [{"s": sid, "g": ids[f"group {g}"]} for sid, (_, _, g) in zip(source_ids, batch, strict=True)],
            )
            await index_prepared_many(conn, prepared)
        print(f"\r  {total} chunks in {time.perf_counter() - started:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    await _add_vectors(engine)
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql("VACUUM ANALYZE")
        else:
            await conn.exec_driver_sql("ANALYZE")
            await conn.commit()
    await engine.dispose()
    return total


async def _add_vectors(engine: AsyncEngine) -> None:
    """Give every chunk a vector of the bundled local model, so that the server starts with nothing to embed.

    Embedding 100,000 sections for real would take this 2-core machine hours, and a server still embedding
    in the background would be measured along with the chats. The vectors are synthetic (bench_vectors.py's
    structured ones); a dense search costs the same whatever they mean. Each question's own embedding is real.
    """
    async with engine.begin() as conn:
        model = await register_model(conn, MODEL_NAME, DIMENSION)
        ids = [int(r[0]) for r in await conn.execute(text("SELECT id FROM rag_chunks ORDER BY id"))]
    rng = np.random.default_rng(42)
    for start in range(0, len(ids), 5000):
        batch = ids[start : start + 5000]
        async with engine.begin() as conn:
            await write_vectors(conn, model.id, list(zip(batch, _vectors("structured", rng, len(batch)), strict=True)))
        print(f"\r  {start + len(batch)} vectors", end="", file=sys.stderr)
    print(file=sys.stderr)
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '1GB'")
        await register_model(conn, MODEL_NAME, DIMENSION)  # creates the model's HNSW index again
        await activate_model(conn, model.id)
        await conn.execute(text("UPDATE sources SET embedding_state = 'done'"))


def _stop_pg(workdir: Path) -> None:
    """Stop the benchmark's PostgreSQL (its data stays for the next run). pgserver's `cleanup()` does not
    stop a server got with cleanup_mode=None, and every run used to leave one running."""
    from pgserver.postgres_server import pg_ctl

    pgdata = workdir / "pg"
    if (pgdata / "postmaster.pid").exists():
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user="pgserver" if os.geteuid() == 0 else None)


def prepared_database(database: str, workdir: Path, n_chunks: int, llm_url: str, *, rebuild: bool) -> str:
    """A migrated database holding the benchmark corpus, built on first use and reused afterwards."""
    if rebuild or not (workdir / READY).exists():
        if database == "postgresql" and (workdir / "pg").exists():
            _stop_pg(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        url = database_url(database, workdir)
        with serve(url, workdir, llm_url):
            pass  # migrations applied, admin created
        chunks = asyncio.run(_load_corpus(url, n_chunks))
        (workdir / READY).write_text(str(chunks))
        return url
    return database_url(database, workdir)


def overhead(database: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir) / f"overhead-{database}-{args.chunks}"
    try:
        with fake_llm(0.0) as llm_url:
            url = prepared_database(database, workdir, args.chunks, llm_url, rebuild=args.rebuild)
        chunks = int((workdir / READY).read_text())
        with open(SCIFACT / "queries.test.jsonl", encoding="utf-8") as handle:
            queries = [json.loads(line)["text"] for line in handle if line.strip()][: args.questions]
        results: dict[str, Any] = {"database": database, "chunks": chunks}
        with fake_llm(0.0) as llm_url, serve(url, workdir, llm_url, args.embedding) as server:
            api = server.api
            admin = login(api, ADMIN_EMAIL, ADMIN_PASSWORD)
            scopes = {"1 %": ["group 0"], "100 %": [f"group {g}" for g in range(GROUPS)]}
            for label, groups in scopes.items():
                token = create_user(api, admin, f"scope-{label[:-2].strip()}@bench.example", groups)
                body_groups = groups
                with httpx.Client(timeout=60) as client:
                    headers = {"Authorization": f"Bearer {token}"}
                    for query in queries[:10]:  # warm-up
                        client.post(f"{api}/chats", json={"question": query, "groups": body_groups}, headers=headers)
                    latencies, searches, cited = [], [], 0
                    for query in queries:
                        started = time.perf_counter()
                        response = client.post(
                            f"{api}/chats", json={"question": query, "groups": body_groups}, headers=headers
                        )
                        latencies.append(time.perf_counter() - started)
                        response.raise_for_status()
                        cited += len(response.json()["data"]["sources"])
                        # The same retrieval alone, for comparison: what the chat adds is the difference.
                        started = time.perf_counter()
                        client.post(
                            f"{api}/search", json={"query": query, "groups": body_groups, "k": 6}, headers=headers
                        ).raise_for_status()
                        searches.append(time.perf_counter() - started)
                    # Continued chats: the same questions, each chat started with one and continued with the
                    # next FOLLOW_UPS (the default scenario reads history); only the follow-ups are timed.
                    follow_ups: list[float] = []
                    for first in range(0, len(queries), FOLLOW_UPS + 1):
                        chat = client.post(
                            f"{api}/chats", json={"question": queries[first], "groups": body_groups}, headers=headers
                        )
                        chat.raise_for_status()
                        chat_id = chat.json()["data"]["chatId"]
                        for query in queries[first + 1 : first + 1 + FOLLOW_UPS]:
                            started = time.perf_counter()
                            client.patch(
                                f"{api}/chats/{chat_id}", json={"question": query}, headers=headers
                            ).raise_for_status()
                            follow_ups.append(time.perf_counter() - started)
                results[label] = {
                    "p50_ms": round(percentile(latencies, 50) * 1000, 1),
                    "p95_ms": round(percentile(latencies, 95) * 1000, 1),
                    "mean_ms": round(statistics.mean(latencies) * 1000, 1),
                    "search_p50_ms": round(percentile(searches, 50) * 1000, 1),
                    "search_p95_ms": round(percentile(searches, 95) * 1000, 1),
                    "continued_p50_ms": round(percentile(follow_ups, 50) * 1000, 1),
                    "continued_p95_ms": round(percentile(follow_ups, 95) * 1000, 1),
                    "sources_per_answer": round(cited / len(queries), 2),
                }
    finally:
        if database == "postgresql":
            _stop_pg(workdir)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=["concurrency", "overhead"])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workdir", default="/tmp/pgpt-bench-chat")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--llm-delay", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="server processes (PGPT_WORKERS)")
    parser.add_argument(
        "--embedding",
        choices=["local", "none"],
        default="local",
        help="the server's PGPT_EMBEDDING_BACKEND: local (the default: hybrid retrieval) or none (BM25 only)",
    )
    args = parser.parse_args()
    for database in [d.strip() for d in args.databases.split(",") if d.strip()]:
        result = concurrency(database, args) if args.target == "concurrency" else overhead(database, args)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
