"""Migration 0005: sources indexed before multilingual analysis are re-ingested in the background and
stay searchable meanwhile; sources in error or already waiting for ingestion get no extra job."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from sqlalchemy import text

from privategpt.db import Database
from privategpt.migrate import upgrade_database
from privategpt.rag import PreparedSource, index_prepared
from privategpt.rag.analyzer import get_analyzer
from privategpt.rag.chunking import chunk_markdown, index_text
from privategpt.rag.store import PreparedChunk
from tests.fixtures.servers import Api, running_server
from tests.rag.conftest import RESOURCES, add_source
from tests.sources.helpers import hit_ids, search

GERMAN = next(d for d in json.loads((RESOURCES / "multilingual.json").read_text()) if d["language"] == "de")

# It builds a database as migration 0004 left it, then migrates it.
pytestmark = pytest.mark.empty_database


def _analysed_in_english(name: str, content: str) -> PreparedSource:
    """The index as every release before 0005 wrote it: the English profile for every chunk."""
    analyzer = get_analyzer("en")
    chunks = []
    for chunk in chunk_markdown(content):
        terms = analyzer.term_frequencies(index_text(name, chunk))
        chunks.append(PreparedChunk(chunk.ordinal, chunk.heading_path, chunk.text, sum(terms.values()), dict(terms)))
    return PreparedSource(language="en", chunks=tuple(chunks))


async def _database_at_0004(settings: Any) -> dict[str, str]:
    database = Database(settings)
    try:
        await upgrade_database(database.engine, "0004")
        async with database.engine.begin() as conn:
            indexed = await add_source(conn, GERMAN["name"], GERMAN["document"], public=True)
            await index_prepared(conn, indexed, _analysed_in_english(GERMAN["name"], GERMAN["document"]))
            failed = await add_source(conn, "empty", "", public=True, state="error")
            waiting = await add_source(conn, "waiting", "Bienen im Keller.", public=True, state="processing")
            await conn.execute(
                text(
                    "INSERT INTO jobs (kind, source_id, state, attempts, run_after, created_at) "
                    "VALUES ('ingest', :s, 'queued', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"s": waiting},
            )
        await upgrade_database(database.engine)
        async with database.engine.connect() as conn:
            rows = await conn.execute(text("SELECT source_id, kind, state FROM jobs ORDER BY source_id"))
            jobs = sorted((r[0], r[1], r[2]) for r in rows)
    finally:
        await database.dispose()
    assert jobs == sorted([(indexed, "ingest", "queued"), (waiting, "ingest", "queued")])
    return {"indexed": indexed, "failed": failed, "waiting": waiting}


def test_old_indexes_are_reanalysed(make_settings: Any) -> None:
    settings = make_settings()
    ids = asyncio.run(_database_at_0004(settings))
    with running_server(settings) as server:
        api = Api(server.base_url)
        german = api.user_token(language="de", usePublic=True)
        # "Honigbiene" meets the text's "Honigbienen" only through German stemming, i.e. once re-ingested.
        deadline = time.monotonic() + 60
        while not (hits := hit_ids(search(api, german, "Honigbiene", usePublic=True))):
            assert time.monotonic() < deadline, "the source was not re-analysed"
            time.sleep(0.1)
        assert hits == [ids["indexed"]]
        assert api.get(f"/sources/{ids['indexed']}", german).json()["data"]["state"] == "vectorized"
        assert api.get(f"/sources/{ids['failed']}", api.admin_token()).json()["data"]["state"] == "error"
        api.close()
