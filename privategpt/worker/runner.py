"""The worker: claims jobs, runs their handlers concurrently, keeps their leases alive.

One `Worker` per process: embedded in the API server (started by its lifespan), or alone under
`privategpt worker`. Handlers do their CPU work in threads, so the event loop they share with the API
keeps answering requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
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
    """Runs one kind of job. Both methods write their outcome in a transaction that calls `queue.hold`."""

    async def run(self, job: ClaimedJob, worker_id: str) -> None: ...

    async def give_up(self, job: ClaimedJob, worker_id: str, reason: str) -> None: ...


class Worker:
    """Claims and runs jobs until stopped; `wake()` makes it look for new jobs at once."""

    def __init__(self, database: Database, settings: Settings, handlers: dict[str, JobHandler]) -> None:
        self.database = database
        self.settings = settings
        self.handlers = handlers
        self.worker_id = queue.new_worker_id()
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._main: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        """Look for jobs now; safe to call from the event loop thread only (SQLAlchemy commit hooks are)."""
        self._wake.set()

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
        """Stop claiming, cancel running jobs and hand them back for the next worker."""
        self._stopping = True
        self._wake.set()
        tasks = [t for t in (self._main, self._heartbeat) if t is not None]
        held = list(self._running)
        tasks.extend(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await queue.release(self.database, self.worker_id, held)
        except Exception:
            logger.exception("Could not hand back %d job(s); their leases will run out instead", len(held))
        _LIVE_WORKER_IDS.discard(self.worker_id)

    async def run_forever(self) -> None:
        """Run until cancelled (the dedicated `privategpt worker` process)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _loop(self) -> None:
        settings = self.settings
        while not self._stopping:
            self._wake.clear()
            free = settings.worker_concurrency - len(self._running)
            claimed: list[ClaimedJob] = []
            if free > 0:
                try:
                    claimed = await queue.claim(
                        self.database, self.worker_id, limit=free, lease_seconds=settings.worker_lease_seconds
                    )
                except Exception:
                    logger.exception("Claiming jobs failed; trying again shortly")
            for job in claimed:
                task = asyncio.create_task(self._run_one(job), name=f"job {job.id}")
                self._running[job.id] = task
                task.add_done_callback(functools.partial(self._done, job.id))
            if claimed and len(claimed) == free:
                continue  # there may be more waiting; the next round finds out once a slot frees up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=settings.worker_poll_seconds)

    def _done(self, job_id: int, _: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._wake.set()

    async def _run_one(self, job: ClaimedJob) -> None:
        handler = self.handlers.get(job.kind)
        try:
            if handler is None:
                raise RuntimeError(f"no handler for job kind {job.kind!r}")
            if job.attempts > self.settings.worker_max_attempts:
                # Claimed this often without finishing: the job itself keeps killing its workers.
                await handler.give_up(
                    job, self.worker_id, f"Ingestion was abandoned after {job.attempts - 1} interrupted attempt(s)."
                )
                return
            logger.info("Running job %s (%s of source %s, attempt %d)", job.id, job.kind, job.source_id, job.attempts)
            await handler.run(job, self.worker_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("Job %s (%s) failed on attempt %d", job.id, job.kind, job.attempts)
            await self._after_failure(job, handler, exc)

    async def _after_failure(self, job: ClaimedJob, handler: JobHandler | None, exc: Exception) -> None:
        try:
            if job.attempts < self.settings.worker_max_attempts or handler is None:
                delay = min(60.0, 2.0**job.attempts)
                await queue.retry_later(
                    self.database, job, self.worker_id, delay_seconds=delay, error=type(exc).__name__
                )
            else:
                await handler.give_up(
                    job, self.worker_id, f"Ingestion was abandoned after {job.attempts} failed attempt(s)."
                )
        except Exception:
            # The lease runs out and another claim retries (or abandons) the job.
            logger.exception("Could not record the failure of job %s", job.id)

    async def _heartbeats(self) -> None:
        lease = self.settings.worker_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            held = list(self._running)
            if not held:
                continue
            try:
                kept = await queue.heartbeat(self.database, self.worker_id, held, lease_seconds=lease)
            except Exception:
                logger.exception("Heartbeat failed; retrying")
                continue
            for job_id in set(held) - kept:
                # Superseded or taken over: whatever this task would write is refused anyway; stop wasting work.
                task = self._running.get(job_id)
                if task is not None:
                    task.cancel()
