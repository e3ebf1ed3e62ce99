"""The job queue's claim rules, run directly on the real database (both backends).

Over HTTP these races depend on timing; here each step is taken in order, so the rule is pinned
deterministically: a superseded or re-claimed job can never be mistaken for the current claim.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from privategpt.db import Database
from privategpt.embeddings.local import LocalEmbedder
from privategpt.migrate import upgrade_database
from privategpt.models import Source, new_uuid
from privategpt.sources.ingestion import IngestionHandler
from privategpt.worker import queue
from privategpt.worker.runner import Worker


@pytest.fixture
async def database(make_settings: Any) -> AsyncIterator[Database]:
    db = Database(make_settings())
    await upgrade_database(db.engine)
    yield db
    await db.dispose()


async def _source_with_job(database: Database) -> str:
    source_id = new_uuid()
    async with database.session() as session:
        session.add(Source(id=source_id, name="s", content="c", is_public=True, state="processing"))
        await session.flush()
        await queue.enqueue(session, queue.INGEST, source_id, wake=None, supersede=False)
    return source_id


async def test_a_claim_takes_only_jobs_of_its_kind(database: Database) -> None:
    source_id = await _source_with_job(database)
    async with database.session() as session:
        await queue.enqueue(session, queue.EMBED, source_id, wake=None, supersede=False)
    [embed] = await queue.claim(database, "w", kind=queue.EMBED, limit=10, lease_seconds=30)
    [ingest] = await queue.claim(database, "w", kind=queue.INGEST, limit=10, lease_seconds=30)
    assert (embed.kind, ingest.kind) == (queue.EMBED, queue.INGEST)
    assert await queue.claim(database, "w", kind=queue.EMBED, limit=10, lease_seconds=30) == []


async def test_a_superseded_claim_holds_nothing_even_if_ids_repeat(database: Database) -> None:
    source_id = await _source_with_job(database)
    [first] = await queue.claim(database, "w", kind=queue.INGEST, limit=10, lease_seconds=30)
    async with database.session() as session:
        await queue.enqueue(session, queue.INGEST, source_id, wake=None)
    [second] = await queue.claim(database, "w", kind=queue.INGEST, limit=10, lease_seconds=30)
    assert first.claim != second.claim
    async with database.session() as session:
        assert await queue.hold(session, [first]) == set()
        assert await queue.hold(session, [second]) == {second.id}


async def test_an_expired_lease_moves_the_job_to_the_next_claim(database: Database) -> None:
    await _source_with_job(database)
    [stalled] = await queue.claim(database, "w1", kind=queue.INGEST, limit=10, lease_seconds=0.001)
    assert await queue.claim(database, "w2", kind=queue.INGEST, limit=10, lease_seconds=30) != []  # the lease ran out
    async with database.session() as session:
        assert await queue.hold(session, [stalled]) == set()
    # The stalled worker's heartbeat no longer renews it either.
    assert await queue.heartbeat(database, "w1", [stalled.id], lease_seconds=30) == set()


async def test_retried_jobs_are_claimed_alone_and_fresh_ones_in_batches(database: Database) -> None:
    for _ in range(3):
        await _source_with_job(database)
    first = await queue.claim(database, "w1", kind=queue.INGEST, limit=2, lease_seconds=0.001)
    assert [j.attempts for j in first] == [1, 1]
    # Two jobs whose worker vanished: each comes back alone, before the fresh one.
    for stalled in first:
        again = await queue.claim(database, "w2", kind=queue.INGEST, limit=10, lease_seconds=30)
        assert [(j.id, j.attempts) for j in again] == [(stalled.id, 2)]
    [fresh] = await queue.claim(database, "w2", kind=queue.INGEST, limit=10, lease_seconds=30)
    assert fresh.attempts == 1 and fresh.id not in {j.id for j in first}


async def test_a_workers_own_earlier_claim_of_the_same_row_holds_nothing(database: Database) -> None:
    await _source_with_job(database)
    [stale] = await queue.claim(database, "w", kind=queue.INGEST, limit=10, lease_seconds=0.001)
    # Same worker, same row, a new claim after the lease ran out: only the new claim may write.
    [current] = await queue.claim(database, "w", kind=queue.INGEST, limit=10, lease_seconds=30)
    assert (current.id, current.attempts) == (stale.id, 2)
    async with database.session() as session:
        assert await queue.hold(session, [stale]) == set()
        assert await queue.hold(session, [current]) == {current.id}


async def test_embedding_waits_until_ingestion_has_settled(database: Database, make_settings: Any) -> None:
    """`Worker.settled`, which embedding awaits before each step: it returns only once no ingestion batch
    has run for the quiet period, or after its longest wait (so that embedding still progresses)."""
    await _source_with_job(database)
    worker = Worker(database, make_settings(), {queue.INGEST: IngestionHandler(database)})
    await worker.settled(queue.INGEST, quiet=10, at_most=30)  # nothing ever ran: at once
    gate = worker.idle_gate(queue.INGEST, quiet=0.2)  # the same, for the local model's thread
    assert gate.is_set()
    jobs = await queue.claim(database, worker.worker_id, kind=queue.INGEST, limit=10, lease_seconds=30)
    worker._start(queue.INGEST, jobs)
    assert worker._running[queue.INGEST] == 1
    assert not gate.is_set()
    await worker.settled(queue.INGEST, quiet=0.2, at_most=30)
    assert worker._running[queue.INGEST] == 0
    assert time.monotonic() - worker._ended_at[queue.INGEST] >= 0.2
    assert await asyncio.to_thread(gate.wait, 30)
    # Within the quiet period, the longest wait ends it.
    waited = time.monotonic()
    await worker.settled(queue.INGEST, quiet=30, at_most=0.05)
    assert time.monotonic() - waited < 30
    async with database.session() as session:
        assert [s.state for s in (await session.scalars(select(Source))).all()] == ["vectorized"]


async def test_passage_jobs_wait_for_their_gate_and_queries_do_not() -> None:
    embedder = LocalEmbedder(threads=1)
    embedder.passage_gate = threading.Event()
    passages = asyncio.create_task(embedder.embed_passages(["Aspirin lowers the risk of a second heart attack."]))
    try:
        query = await embedder.embed_query("does aspirin prevent heart attacks?")
        assert query.shape == (384,)
        await asyncio.sleep(0.2)
        assert not passages.done()  # held back (up to GATE_MAX_WAIT_S) while the gate is closed
    finally:
        embedder.passage_gate.set()
    assert (await passages).shape == (1, 384)
