"""Which handler runs which kind of job."""

from __future__ import annotations

from privategpt.config import Settings
from privategpt.db import Database
from privategpt.sources.ingestion import IngestionHandler
from privategpt.worker.queue import INGEST
from privategpt.worker.runner import JobHandler, Worker


def build_worker(database: Database, settings: Settings) -> Worker:
    """A worker for every job kind this server knows."""
    handlers: dict[str, JobHandler] = {INGEST: IngestionHandler(database)}
    return Worker(database, settings, handlers)
