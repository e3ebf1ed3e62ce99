"""The application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text

from privategpt import __version__
from privategpt.api import include_api
from privategpt.auth.passwords import Passwords
from privategpt.bootstrap import ensure_admin
from privategpt.config import Settings, load_settings
from privategpt.context import AppContext
from privategpt.db import Database
from privategpt.errors import UnexpectedErrorMiddleware, envelope, install_error_handlers
from privategpt.llm import build_language_model
from privategpt.middleware import BodyMiddleware
from privategpt.migrate import upgrade_database
from privategpt.reranking import build_reranker
from privategpt.schemas import Envelope
from privategpt.sources.embedding import start_dense_retrieval
from privategpt.worker.handlers import build_worker

logger = logging.getLogger(__name__)


class HealthOut(BaseModel):
    database: str
    version: str


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; the database is migrated and the first admin ensured when the app starts."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings)
        app.state.llm = build_language_model(settings)
        dense = None
        reranker = build_reranker(settings)
        try:
            await upgrade_database(database.engine)
            dense = await start_dense_retrieval(database, settings)
            context = AppContext(
                settings=settings, database=database, passwords=Passwords(settings), dense=dense, reranker=reranker
            )
            await ensure_admin(context)
            app.state.context = context
            app.state.worker = None
            if settings.embedded_worker:
                app.state.worker = build_worker(database, settings, dense)
                await app.state.worker.start()
            # What start-up built (modules, routes, schemas, models) lives as long as the server. Frozen, the
            # collector stops rescanning it: a full collection of those ~145k objects took 70-130 ms, a pause
            # that every request in flight waited out (GET /groups p99, see docs/benchmarks.md). No collection
            # before it: the little garbage start-up leaves is not worth ~100 ms per start (tests start many).
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()
                if app.state.worker is not None:
                    await app.state.worker.stop()
        finally:
            await app.state.llm.aclose()
            if dense is not None:
                await dense.embedder.aclose()
            if reranker is not None:
                await reranker.aclose()
            await database.dispose()

    app = FastAPI(
        title="PrivateGPT API",
        version=__version__,
        description="PrivateGPT API v1.5: chat with the Markdown documents each person may see.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodyMiddleware, max_bytes=settings.max_body_bytes)
    # Added last, so it wraps every other middleware of ours.
    app.add_middleware(UnexpectedErrorMiddleware)
    include_api(app)

    @app.get("/health", response_model=Envelope[HealthOut], tags=["health"], summary="Ready when 200")
    async def health() -> dict[str, object]:
        context: AppContext = app.state.context
        async with context.database.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return envelope({"database": "ok", "version": __version__})

    return app
