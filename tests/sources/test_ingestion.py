"""Durable background ingestion: states, superseded content, shared queues, and recovery from SIGKILL.

"Indexed exactly once" is checked through the API: each document's name holds a canary word, and the
name is indexed with every chunk, so searching the canary returns every chunk of that document. The
count must equal what the chunker makes of the document, and no chunk may come back twice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from privategpt.rag import prepare_source
from tests.fixtures.servers import Api, running_server
from tests.sources.helpers import canary, create_source, get_source, hit_ids, search, wait_settled
from tests.sources.processes import Cluster

_WORDS = (
    "alpha beta gamma delta epsilon zeta theta iota kappa lambda sigma omega river mountain harbour "
    "ledger invoice contract policy travel budget audit review schedule meeting"
).split()


def _document(rng: random.Random, sections: int) -> str:
    parts = []
    for s in range(sections):
        words = " ".join(f"{rng.choice(_WORDS)}{rng.randint(0, 999)}" for _ in range(300))
        parts.append(f"## Section {s}\n\n{words}")
    return "\n\n".join(parts)


def _assert_indexed_once(api: Api, token: str, docs: dict[str, tuple[str, str, str]]) -> None:
    """docs: source id -> (canary, name, content), all public."""
    for source_id, (word, name, content) in docs.items():
        expected = len(prepare_source(name, content).chunks)
        hits = search(api, token, word, usePublic=True, k=100)
        assert hit_ids(hits) == [source_id] * expected, (source_id, len(hits), expected)
        chunks = {(h["excerpt"], tuple(h["headingPath"])) for h in hits}
        assert len(chunks) == expected


@pytest.fixture
def cluster(database_url: str, tmp_path: Path) -> Iterator[Cluster]:
    # A short lease, so that a killed worker's jobs are retried within the test's patience.
    # Small batches, so that a kill can fall between two committed batches as well as inside one.
    running = Cluster(
        database_url,
        tmp_path / "cluster",
        worker_lease_seconds="1.5",
        worker_poll_seconds="0.2",
        worker_batch_size="3",
        # Several crashes in a row may all interrupt one job; abandoning it is another test's subject.
        worker_max_attempts="20",
    )
    yield running
    running.close()


def test_error_state_and_recovery_by_new_content(api: Api, admin: str) -> None:
    # Only stop words: no chunk has a searchable term.
    source_id = create_source(api, admin, name="The", groups=[], content="and the of")
    data = wait_settled(api, admin, [source_id])[source_id]
    assert (data["state"], data["error"]) == ("error", "The content contains no searchable text.")
    word = canary()
    fixed = api.patch(f"/sources/{source_id}", admin, json={"content": word}).json()["data"]
    assert (fixed["state"], fixed["error"]) == ("processing", None)
    assert wait_settled(api, admin, [source_id])[source_id]["state"] == "vectorized"
    assert hit_ids(search(api, admin, word, usePublic=True)) == [source_id]


def test_jobs_wait_in_the_database_and_newer_content_supersedes(make_settings: Any) -> None:
    words = [canary() for _ in range(4)]
    with running_server(make_settings(embedded_worker=False, worker_poll_seconds=0.1)) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        source_id = create_source(api, admin, name="Versions", groups=[], content=words[0])
        for word in words[1:]:
            assert api.patch(f"/sources/{source_id}", admin, json={"content": word}).status_code == 200
        # Without a worker nothing happens, however long we wait.
        time.sleep(0.5)
        assert get_source(api, admin, source_id)["state"] == "processing"
        api.close()
    with running_server(make_settings(worker_poll_seconds=0.1)) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        assert wait_settled(api, admin, [source_id])[source_id]["state"] == "vectorized"
        assert hit_ids(search(api, admin, words[-1], usePublic=True)) == [source_id]
        for old in words[:-1]:
            assert search(api, admin, old, usePublic=True) == []
        # Rapid edits while the worker runs: whatever the interleaving, the source ends with its last
        # content, indexed once. (Repeated edits of one source are what once let a job id that SQLite
        # reused be taken for the superseded job it replaced.)
        rng = random.Random(4)
        for _ in range(3):
            for _ in range(6):
                last = canary()
                content = f"# Edit {last}\n\n{_document(rng, rng.randint(1, 3))}"
                assert api.patch(f"/sources/{source_id}", admin, json={"content": content}).status_code == 200
                time.sleep(rng.uniform(0, 0.03))
            assert wait_settled(api, admin, [source_id])[source_id]["state"] == "vectorized"
            _assert_indexed_once(api, admin, {source_id: (last, "Versions", content)})
        assert search(api, admin, words[-1], usePublic=True) == []
        api.close()


def _post_documents(api: Api, token: str, count: int, seed: int, sections: int = 3) -> dict[str, tuple[str, str, str]]:
    rng = random.Random(seed)
    docs = {}
    for i in range(count):
        word = canary()
        name = f"Doc {i} {word}"
        content = _document(rng, sections)
        docs[create_source(api, token, name=name, groups=[], content=content)] = (word, name, content)
    return docs


def _processing(api: Api, token: str) -> int:
    total: int = api.get("/sources", token, params={"state": "processing", "perPage": 1}).json()["data"]["total"]
    return total


@pytest.mark.slow
def test_kill_9_of_the_server_mid_ingestion(cluster: Cluster) -> None:
    process, base_url = cluster.serve()
    api = Api(base_url)
    docs: dict[str, tuple[str, str, str]] = {}
    rng = random.Random(3)
    for round_ in range(3):
        admin = api.admin_token()
        docs.update(_post_documents(api, admin, 12, seed=round_, sections=16))
        time.sleep(rng.uniform(0.0, 0.2))
        assert _processing(api, admin) > 0, "ingestion finished before the kill; the test proves nothing"
        process.kill()
        process, base_url = cluster.serve()
        api = Api(base_url)
    admin = api.admin_token()
    states = wait_settled(api, admin, list(docs), timeout=120)
    assert {s["state"] for s in states.values()} == {"vectorized"}
    _assert_indexed_once(api, admin, docs)
    process.stop()


@pytest.mark.slow
def test_dedicated_workers_share_the_queue_and_survive_a_killed_one(cluster: Cluster) -> None:
    server, base_url = cluster.serve(embedded_worker="false")
    api = Api(base_url)
    admin = api.admin_token()
    doomed = cluster.worker(worker_concurrency="2")
    docs = _post_documents(api, admin, 14, seed=7, sections=8)
    # These start while `doomed` is alive, so only its lease running out can free its jobs for them.
    survivors = [cluster.worker(worker_concurrency="2") for _ in range(2)]
    deadline = time.monotonic() + 30
    while _processing(api, admin) == len(docs):
        assert time.monotonic() < deadline, f"no worker made progress:\n{doomed.output()}"
        time.sleep(0.05)
    assert _processing(api, admin) > 0, "ingestion finished before the kill; the test proves nothing"
    doomed.kill()
    states = wait_settled(api, admin, list(docs), timeout=120)
    assert {s["state"] for s in states.values()} == {"vectorized"}, survivors[0].output()
    _assert_indexed_once(api, admin, docs)
    for worker in survivors:
        worker.stop()
        assert worker.popen.returncode == 0, worker.output()
    server.stop()


@pytest.mark.slow
def test_a_job_that_keeps_killing_workers_is_abandoned_alone(cluster: Cluster) -> None:
    server, base_url = cluster.serve(embedded_worker="false")
    api = Api(base_url)
    admin = api.admin_token()
    heavy = create_source(api, admin, name="Heavy", groups=[], content=_document(random.Random(9), 200))
    light = {create_source(api, admin, name=f"Light {i}", groups=[], content=canary()): i for i in range(4)}
    # Each worker that takes the heavy job dies with it: first in a batch with the light jobs, then alone.
    for attempt, settings in ((1, {"worker_batch_size": "10"}), (2, {"worker_concurrency": "1"})):
        worker = cluster.worker(worker_max_attempts="2", log_level="info", **settings)
        deadline = time.monotonic() + 60
        while f"source {heavy}, attempt {attempt})" not in worker.output():
            assert time.monotonic() < deadline, worker.output()
            time.sleep(0.02)
        worker.kill()
    assert {get_source(api, admin, sid)["state"] for sid in [heavy, *light]} == {"processing"}
    # The third claim of the heavy job is over the limit: an error instead of a third crash. The light
    # jobs were retried one by one, so the crashes charged them one attempt, not three.
    survivor = cluster.worker(worker_max_attempts="2")
    states = wait_settled(api, admin, [heavy, *light], timeout=60)
    assert (states[heavy]["state"], states[heavy]["error"]) == (
        "error",
        "Ingestion was abandoned after 2 interrupted attempt(s).",
    )
    assert {states[sid]["state"] for sid in light} == {"vectorized"}
    assert search(api, admin, "Heavy", usePublic=True) == []
    survivor.stop()
    server.stop()
