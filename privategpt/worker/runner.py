"""The worker: claims jobs, runs their handlers concurrently, keeps their leases alive.

One `Worker` per process: embedded in the API server (started by its lifespan), or alone under
`privategpt worker`. Handlers do their CPU work in threads, so the event loop they share with the API
keeps answering requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from privategpt.config import Settings
from privategpt.db import Database
from privategpt.worker import queue
from privategpt.worker.queue import ClaimedJob

logger = logging.getLogger(__name__)

# Worker ids alive in this process, so that lease recovery after a restart never takes a job from a
# sibling worker that happens to share the process id (two apps in one test process).
_LIVE_WORKER_IDS: set[str] = set()


class JobHandler(Protocol):
    """Runs one kind of job, a batch at a time.

    Both methods write their outcome in one transaction that first calls `queue.hold`, and write only for
    the jobs it returns (the others were superseded or taken over meanwhile).
    """

    async def run(self, jobs: Sequence[ClaimedJob]) -> None: ...

    async def give_up(self, jobs: Sequence[ClaimedJob], reason: str) -> None: ...


class Worker:
    """Claims and runs jobs until stopped; `wake()` makes it look for new jobs at once."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        handlers: dict[str, JobHandler],
        slots: dict[str, int] | None = None,
    ) -> None:
        """`handlers` in priority order (claimed first when several kinds wait); `slots` caps the batches of a
        kind running at once (default `worker_concurrency`), so slow kinds never take every slot."""
        self.database = database
        self.settings = settings
        self.handlers = handlers
        self.slots = {kind: (slots or {}).get(kind, settings.worker_concurrency) for kind in handlers}
        self._running: dict[str, int] = dict.fromkeys(handlers, 0)
        # Per kind: set while no batch of it runs, and when its last batch ended (`settled`).
        self._idle: dict[str, asyncio.Event] = {kind: asyncio.Event() for kind in handlers}
        for idle in self._idle.values():
            idle.set()
        self._ended_at: dict[str, float] = dict.fromkeys(handlers, -math.inf)
        # Per kind: flags for other threads (`idle_gate`), each with its quiet period.
        self._gates: dict[str, list[tuple[threading.Event, float]]] = {}
        self.worker_id = queue.new_worker_id()
        self._wake = asyncio.Event()
        # Set when a batch ends: the next round may claim for a kind that still has a batch running.
        self._batch_ended = False
        # Batches in flight, and the jobs each holds (kept alive by the heartbeat, handed back on stop).
        self._batches: dict[asyncio.Task[None], list[int]] = {}
        self._main: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        """Look for jobs now; call it on the event loop's thread (SQLAlchemy's commit hooks run there)."""
        self._wake.set()

    async def settled(self, kind: str, quiet: float, at_most: float) -> None:
        """Return once no batch of `kind` has run in this worker for `quiet` seconds, or after `at_most`.

        An in-process signal, no query: background work (embedding) waits here so that it never competes
        with `kind` (ingestion) for this machine's cores, the GIL or the database's write turn."""
        deadline = time.monotonic() + at_most
        while (now := time.monotonic()) < deadline:
            if self._running.get(kind):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle[kind].wait(), timeout=deadline - now)
                continue
            wait = self._ended_at.get(kind, -math.inf) + quiet - now
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, deadline - now))

    def idle_gate(self, kind: str, quiet: float) -> threading.Event:
        """`settled` for threads: a flag set while no batch of `kind` has run for `quiet` seconds, cleared
        the moment one starts. The local embedding model's thread waits on it before each passage job."""
        gate = threading.Event()
        self._gates.setdefault(kind, []).append((gate, quiet))
        if not self._running.get(kind):
            self._open_later(kind, gate, quiet)
        return gate

    def _open_later(self, kind: str, gate: threading.Event, quiet: float) -> None:
        wait = self._ended_at.get(kind, -math.inf) + quiet - time.monotonic()
        if wait <= 0:
            gate.set()
        else:
            asyncio.get_running_loop().call_later(wait, self._open_if_settled, kind, gate, quiet)

    def _open_if_settled(self, kind: str, gate: threading.Event, quiet: float) -> None:
        # A batch may have started (and ended) meanwhile: the last end decides.
        if not self._running.get(kind) and not self._stopping:
            self._open_later(kind, gate, quiet)

    @property
    def _held(self) -> list[int]:
        return [job_id for ids in self._batches.values() for job_id in ids]

    async def start(self) -> None:
        _LIVE_WORKER_IDS.add(self.worker_id)
        try:
            recovered = await queue.expire_dead_local_leases(self.database, set(_LIVE_WORKER_IDS))
        except Exception:
            logger.exception("Could not recover the jobs of crashed workers; their leases will run out instead")
            recovered = 0
        if recovered:
            logger.info("Retrying %d job(s) left behind by a stopped worker", recovered)
        self._main = asyncio.create_task(self._loop(), name=f"worker {self.worker_id}")
        self._heartbeat = asyncio.create_task(self._heartbeats(), name=f"heartbeat {self.worker_id}")

    async def stop(self) -> None:
        """Stop claiming, cancel running batches and hand their jobs back for the next worker."""
        self._stopping = True
        for gates in self._gates.values():
            for gate, _ in gates:
                gate.set()  # nothing of this worker's runs any more: never leave a thread waiting
        held = self._held
        tasks = [t for t in (self._main, self._heartbeat) if t is not None]
        tasks.extend(self._batches)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await queue.release(self.database, self.worker_id, held)
        except Exception:
            logger.exception("Could not hand back %d job(s); their leases will run out instead", len(held))
        _LIVE_WORKER_IDS.discard(self.worker_id)

    async def _loop(self) -> None:
        settings = self.settings
        woken = True
        while not self._stopping:
            self._wake.clear()
            batch_ended, self._batch_ended = self._batch_ended, False
            started = False
            for kind in self.handlers:
                if self._running[kind] >= self.slots[kind]:
                    continue
                if self._running[kind] and woken and not batch_ended:
                    # Only a commit that queued jobs woke us while a batch of this kind runs: the jobs queued
                    # meanwhile wait for its end and go in one claim, not one small batch (and one idle check)
                    # per `POST /sources`. A poll, or the end of a batch, claims as usual.
                    continue
                try:
                    claimed = await queue.claim(
                        self.database,
                        self.worker_id,
                        kind=kind,
                        limit=settings.worker_batch_size,
                        lease_seconds=settings.worker_lease_seconds,
                    )
                except Exception:
                    logger.exception("Claiming %s jobs failed; trying again shortly", kind)
                    continue
                if claimed:
                    self._start(kind, claimed)
                    started = True
            if started:
                woken = True
                continue  # there may be more waiting; the next round finds out once a slot is free
            woken = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=settings.worker_poll_seconds)
                woken = True

    def _start(self, kind: str, jobs: list[ClaimedJob]) -> None:
        task = asyncio.create_task(self._run_kind(kind, jobs), name=f"{kind} jobs {jobs[0].id}..")
        self._batches[task] = [job.id for job in jobs]
        self._running[kind] += 1
        self._idle[kind].clear()
        for gate, _ in self._gates.get(kind, ()):
            gate.clear()

        def done(task: asyncio.Task[None]) -> None:
            self._batches.pop(task, None)
            self._running[kind] -= 1
            self._ended_at[kind] = time.monotonic()
            if not self._running[kind]:
                self._idle[kind].set()
                if not self._stopping:
                    for gate, quiet in self._gates.get(kind, ()):
                        self._open_later(kind, gate, quiet)
            self._batch_ended = True
            self._wake.set()

        task.add_done_callback(done)

    async def _run_kind(self, kind: str, jobs: list[ClaimedJob]) -> None:
        handler = self.handlers.get(kind)
        limit = self.settings.worker_max_attempts
        try:
            if handler is None:
                raise RuntimeError(f"no handler for job kind {kind!r}")
            # Claimed this often without finishing: the job itself keeps killing its workers.
            exhausted = [job for job in jobs if job.attempts > limit]
            if exhausted:
                reason = f"Ingestion was abandoned after {limit} interrupted attempt(s)."
                await handler.give_up(exhausted, reason)
            runnable = [job for job in jobs if job.attempts <= limit]
            for job in runnable:
                logger.info("Running job %s (%s of source %s, attempt %d)", job.id, kind, job.source_id, job.attempts)
            if runnable:
                await handler.run(runnable)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%d %s job(s) failed", len(jobs), kind)
            await self._after_failure(jobs, handler, exc)

    async def _after_failure(self, jobs: list[ClaimedJob], handler: JobHandler | None, exc: Exception) -> None:
        limit = self.settings.worker_max_attempts
        again = [job for job in jobs if job.attempts < limit or handler is None]
        last = [job for job in jobs if job not in again]
        try:
            if again:
                delay = min(60.0, 2.0 ** max(job.attempts for job in again))
                await queue.retry_later(self.database, again, delay_seconds=delay, error=type(exc).__name__)
            if last and handler is not None:
                await handler.give_up(last, f"Ingestion was abandoned after {limit} failed attempt(s).")
        except Exception:
            # The leases run out and a later claim retries (or abandons) the jobs.
            logger.exception("Could not record the failure of %d job(s)", len(jobs))

    async def _heartbeats(self) -> None:
        lease = self.settings.worker_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            held = self._held
            if not held:
                continue
            try:
                # Jobs lost meanwhile (superseded, or taken over after a stall) simply stop being renewed:
                # the final transaction of their batch skips them.
                await queue.heartbeat(self.database, self.worker_id, held, lease_seconds=lease)
            except Exception:
                logger.exception("Heartbeat failed; retrying")
