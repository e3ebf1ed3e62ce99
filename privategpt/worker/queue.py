"""The durable job queue: rows in `jobs`, claimed under a lease, finished in the job's own transaction.

Guarantees, and what gives them:

* A job exists only if the change that asked for it committed: `enqueue` writes the row in the caller's
  transaction, and workers are woken only after that transaction commits (`wake_after_commit`).
* Two workers never run a job at once: `claim` takes rows with `SELECT ... FOR UPDATE SKIP LOCKED` on
  PostgreSQL; on SQLite the write session's `BEGIN IMMEDIATE` makes the select-and-update atomic.
* A crashed worker's job is retried: its lease (`locked_until`) stops being renewed and runs out, and
  `claim` takes expired jobs like queued ones.
* A result is written only by the current holder of the current job: the handler's final transaction
  calls `hold`, which locks the job row and checks `locked_by`. A job deleted meanwhile (superseded by
  newer content, or its source deleted) or re-claimed after a lost lease writes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, and_, bindparam, delete, event, insert, or_, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from privategpt.db import Database, DriverQuery, DriverWrite, on_sqlite_thread
from privategpt.models import Job, UTCDateTime, utcnow

INGEST = "ingest"
# Dense vectors of an indexed source: slow (a CPU model), so kept apart from `ingest` jobs, which must
# never wait behind them (a source is searchable by BM25 as soon as its lexical index is written).
EMBED = "embed"


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    source_id: str
    # Claims so far, this one included.
    attempts: int
    # The `locked_by` this claim wrote: unique per claim, so a later claim of the same row (or of a row
    # that reuses a deleted job's id) is never mistaken for this one.
    claim: str


def new_worker_id() -> str:
    """`host:pid:random`: unique per worker instance, and tells a later process on this host whose it was.

    Each claim writes `<worker id>/<random>` into `locked_by`.
    """
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _claimed_by(worker_id: str) -> ColumnElement[bool]:
    return Job.locked_by.startswith(worker_id + "/", autoescape=True)


def wake_after_commit(session: AsyncSession, wake: Callable[[], None] | None) -> None:
    """Call `wake` once the session's transaction has committed (never if it rolls back)."""
    if wake is None:
        return

    def _after_commit(_: Session) -> None:
        wake()

    event.listen(session.sync_session, "after_commit", _after_commit, once=True)


# A queued job; its parameters come from `job_rows`.
INSERT_JOB = DriverWrite(
    insert(Job).values(
        kind=bindparam("kind"),
        source_id=bindparam("source_id"),
        state="queued",
        attempts=0,
        run_after=bindparam("now"),
        created_at=bindparam("now"),
    )
)


async def enqueue(
    session: AsyncSession, kind: str, source_id: str, *, wake: Callable[[], None] | None, supersede: bool = True
) -> None:
    """Queue a job for `source_id` in the caller's transaction, replacing any earlier job of that source.

    Deleting the earlier job (queued or running) is what supersedes it: its worker finds the row gone
    in its final transaction and writes nothing, so stale content is never indexed last. A source created
    in this very transaction has no earlier job (`supersede=False` saves the statement).
    """
    await enqueue_many(session, kind, [source_id], wake=wake, supersede=supersede)


async def enqueue_many(
    session: AsyncSession,
    kind: str,
    source_ids: Sequence[str],
    *,
    wake: Callable[[], None] | None,
    supersede: bool = True,
) -> None:
    """`enqueue` for several sources: one statement to supersede them, one to insert the jobs."""
    if not source_ids:
        return
    # The sources may still be pending in the session; the job rows reference them.
    await session.flush()
    connection = await session.connection()
    if supersede:
        await connection.execute(delete(Job).where(Job.source_id.in_(list(source_ids)), Job.kind == kind))
    await INSERT_JOB.run_many(connection, job_rows(kind, source_ids))
    wake_after_commit(session, wake)


def job_rows(kind: str, source_ids: Sequence[str]) -> list[dict[str, object]]:
    """Parameters of `INSERT_JOB` for new jobs of these sources (for `db.run_writes`)."""
    now = utcnow()
    return [{"kind": kind, "source_id": source_id, "now": now} for source_id in source_ids]


def _runnable(kind: Any, now: Any) -> ColumnElement[bool]:
    """Jobs of `kind` that may be claimed at `now`: queued and due, or running with an expired lease."""
    return and_(
        Job.kind == kind,
        or_(
            and_(Job.state == "queued", Job.run_after <= now),
            and_(Job.state == "running", Job.locked_until < now),
        ),
    )


_ANY_RUNNABLE = DriverQuery(
    select(Job.id).where(_runnable(bindparam("kind", type_=String), bindparam("now", type_=UTCDateTime))).limit(1)
)


async def claim(database: Database, worker_id: str, *, kind: str, limit: int, lease_seconds: float) -> list[ClaimedJob]:
    """Take runnable jobs of one kind (queued and due, or running with an expired lease), oldest first.

    A job tried before (its worker crashed or it failed) is taken alone: if it is what kills workers, it
    must not take a batch of innocent jobs down with it again, nor charge them an attempt. Otherwise up
    to `limit` fresh jobs are taken together.
    """
    now = utcnow()
    # A plain read first: an idle worker polling must not take SQLite's write lock every time. The embedded
    # worker is woken by every commit that queues a job, so this runs about once per `POST /sources`: on the
    # driver's connection, one hop to SQLite's thread instead of SQLAlchemy's four.
    async with database.session(write=False) as session:
        if not await _ANY_RUNNABLE.all(await session.connection(), kind=kind, now=now):
            return []
    claim_token = f"{worker_id}/{uuid.uuid4().hex[:8]}"
    until = now + timedelta(seconds=lease_seconds)
    async with database.session(write=True) as session:
        connection = await session.connection()
        if connection.dialect.name == "sqlite":
            taken = await _claim_sqlite(connection, kind, limit, claim_token, now, until)
            mine = [ClaimedJob(id=r[0], kind=r[1], source_id=r[2], attempts=r[3], claim=claim_token) for r in taken]
            return sorted(mine, key=lambda job: job.id)
        runnable = _runnable(kind, now)
        ids = list(
            await session.scalars(
                select(Job.id)
                .where(runnable, Job.attempts > 0)
                .order_by(Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
        )
        if not ids:
            ids = list(
                await session.scalars(
                    select(Job.id)
                    .where(runnable, Job.attempts == 0)
                    .order_by(Job.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
        if not ids:
            return []
        # One statement for the whole batch, rows back with their new attempt counts (Core: no ORM objects).
        rows = await session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(
                state="running",
                locked_by=claim_token,
                locked_until=until,
                attempts=Job.attempts + 1,
            )
            .returning(Job.id, Job.kind, Job.source_id, Job.attempts)
            .execution_options(synchronize_session=False)
        )
        claimed = [
            ClaimedJob(id=job_id, kind=job_kind, source_id=source_id, attempts=attempts, claim=claim_token)
            for job_id, job_kind, source_id, attempts in rows
        ]
        return sorted(claimed, key=lambda job: job.id)


def _claim_statement(retried: bool) -> DriverWrite:
    """Claim up to `limit` runnable jobs of `kind`, tried before (`retried`) or fresh, oldest first."""
    runnable = _runnable(bindparam("kind", type_=String), bindparam("now", type_=UTCDateTime))
    tried = Job.attempts > 0 if retried else Job.attempts == 0
    pick = select(Job.id).where(runnable, tried).order_by(Job.id).limit(bindparam("limit", type_=Integer))
    return DriverWrite(
        update(Job)
        .where(Job.id.in_(pick))
        .values(
            state="running",
            locked_by=bindparam("claim", type_=String),
            locked_until=bindparam("until", type_=UTCDateTime),
            attempts=Job.attempts + 1,
        )
        .returning(Job.id, Job.kind, Job.source_id, Job.attempts)
    )


_CLAIM_RETRIED, _CLAIM_FRESH = _claim_statement(True), _claim_statement(False)


async def _claim_sqlite(
    connection: AsyncConnection, kind: str, limit: int, claim_token: str, now: Any, until: Any
) -> list[tuple[int, str, str, int]]:
    """`claim` on SQLite, in one hop to its thread: BEGIN IMMEDIATE already serialises the claims."""
    params = {"kind": kind, "now": now, "claim": claim_token, "until": until}
    retried = _CLAIM_RETRIED.on_driver(connection.dialect, **params, limit=1)
    fresh = _CLAIM_FRESH.on_driver(connection.dialect, **params, limit=limit)

    def work(sqlite: sqlite3.Connection) -> list[tuple[int, str, str, int]]:
        return sqlite.execute(*retried).fetchall() or sqlite.execute(*fresh).fetchall()

    return await on_sqlite_thread(connection, work)


# Sets of ids bound as one JSON array (`json_each`), on SQLite's own connection.
_IN_JSON = "IN (SELECT value FROM json_each(?))"


def hold_sqlite(sqlite: sqlite3.Connection, jobs: Sequence[ClaimedJob]) -> set[int]:
    """`hold` on SQLite's own connection, in its thread (`rag.store.on_sqlite_thread`), in a write
    transaction (BEGIN IMMEDIATE: no other writer meanwhile, so no row locks are needed)."""
    claims = {j.id: j.claim for j in jobs}
    rows = sqlite.execute(
        f"SELECT id, locked_by FROM jobs WHERE id {_IN_JSON} AND state = 'running'", (json.dumps(list(claims)),)
    ).fetchall()
    return {job_id for job_id, locked_by in rows if locked_by == claims[job_id]}


def finish_sqlite(sqlite: sqlite3.Connection, job_ids: Iterable[int]) -> None:
    """`finish` on SQLite's own connection."""
    ids = list(job_ids)
    if ids:
        sqlite.execute(f"DELETE FROM jobs WHERE id {_IN_JSON}", (json.dumps(ids),))


def enqueue_sqlite(sqlite: sqlite3.Connection, dialect: Dialect, kind: str, source_ids: Sequence[str]) -> None:
    """`enqueue_many` (superseding earlier jobs) on SQLite's own connection; the caller wakes the workers
    after the commit (`wake_after_commit`)."""
    if not source_ids:
        return
    sqlite.execute(f"DELETE FROM jobs WHERE kind = ? AND source_id {_IN_JSON}", (kind, json.dumps(list(source_ids))))
    rows = [INSERT_JOB.on_driver(dialect, **row) for row in job_rows(kind, source_ids)]
    sqlite.executemany(rows[0][0], [params for _, params in rows])


async def heartbeat(database: Database, worker_id: str, job_ids: Sequence[int], *, lease_seconds: float) -> set[int]:
    """Extend the lease of the jobs this worker still holds; returns their ids (the others were lost)."""
    if not job_ids:
        return set()
    async with database.session(write=True) as session:
        result = await session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), _claimed_by(worker_id), Job.state == "running")
            .values(locked_until=utcnow() + timedelta(seconds=lease_seconds))
            .returning(Job.id)
        )
        return set(result.scalars())


async def hold(session: AsyncSession, jobs: Sequence[ClaimedJob]) -> set[int]:
    """Lock the job rows in the caller's transaction; returns the ids still held under these very claims."""
    if not jobs:
        return set()
    claims = {j.id: j.claim for j in jobs}
    rows = await session.execute(
        select(Job.id, Job.locked_by)
        .where(Job.id.in_(list(claims)), Job.state == "running")
        .order_by(Job.id)
        .with_for_update()
    )
    return {job_id for job_id, locked_by in rows if locked_by == claims[job_id]}


async def finish(session: AsyncSession, job_ids: Iterable[int]) -> None:
    """Remove finished jobs in the caller's transaction; their outcome lives on the source."""
    ids = list(job_ids)
    if ids:
        await session.execute(delete(Job).where(Job.id.in_(ids)))


async def retry_later(database: Database, jobs: Sequence[ClaimedJob], *, delay_seconds: float, error: str) -> None:
    """Put jobs that failed for a passing reason back in the queue, due after `delay_seconds`."""
    if not jobs:
        return
    async with database.session(write=True) as session:
        await session.execute(
            update(Job)
            .where(Job.id.in_([j.id for j in jobs]), Job.locked_by.in_({j.claim for j in jobs}))
            .values(
                state="queued",
                locked_by=None,
                locked_until=None,
                run_after=utcnow() + timedelta(seconds=delay_seconds),
                last_error=error[:2000],
            )
        )


async def release(database: Database, worker_id: str, job_ids: Sequence[int]) -> None:
    """Hand jobs back on a clean shutdown, without counting the interrupted attempt."""
    if not job_ids:
        return
    async with database.session(write=True) as session:
        await session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), _claimed_by(worker_id))
            .values(state="queued", locked_by=None, locked_until=None, attempts=Job.attempts - 1)
        )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def expire_dead_local_leases(database: Database, live_worker_ids: set[str]) -> int:
    """Expire the leases of jobs held by workers of this host whose process is gone.

    Only a speed-up after a crash and restart (otherwise the lease runs out on its own): a wrong guess
    costs repeated work, never a wrong result, because only the current holder may write a result.
    """
    host = socket.gethostname()[:80]
    async with database.session(write=True) as session:
        held = (
            await session.execute(
                select(Job.id, Job.locked_by).where(
                    Job.state == "running", Job.locked_by.startswith(host + ":", autoescape=True)
                )
            )
        ).all()
        dead: list[int] = []
        for job_id, locked_by in held:
            _, pid_text, _ = str(locked_by).rsplit(":", 2)
            worker_id = str(locked_by).split("/", 1)[0]
            if not pid_text.isdigit() or int(pid_text) <= 0:
                continue
            pid = int(pid_text)
            same_process = pid == os.getpid()
            if (same_process and worker_id not in live_worker_ids) or (not same_process and not _process_alive(pid)):
                dead.append(job_id)
        if dead:
            await session.execute(
                update(Job).where(Job.id.in_(dead)).values(locked_until=utcnow() - timedelta(seconds=1))
            )
        return len(dead)
