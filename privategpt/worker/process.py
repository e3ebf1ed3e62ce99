"""`privategpt worker`: a process that only runs background jobs, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from privategpt.config import Settings
from privategpt.db import Database
from privategpt.migrate import upgrade_database
from privategpt.sources.embedding import start_dense_retrieval
from privategpt.worker.handlers import build_worker

logger = logging.getLogger(__name__)


async def _run(settings: Settings) -> None:
    database = Database(settings)
    dense = None
    try:
        await upgrade_database(database.engine)
        dense = await start_dense_retrieval(database, settings)
        worker = build_worker(database, settings, dense)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await worker.start()
        logger.info("Worker %s running %d job(s) at a time", worker.worker_id, settings.worker_concurrency)
        try:
            await stop.wait()
        finally:
            # Hands running jobs back, so the next worker starts them at once instead of after the lease.
            await worker.stop()
    finally:
        if dense is not None:
            await dense.embedder.aclose()
        await database.dispose()


def run_worker_process(settings: Settings) -> int:
    """Run a dedicated worker in this process until it is told to stop."""
    asyncio.run(_run(settings))
    return 0
