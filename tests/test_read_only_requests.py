"""Reading requests do not queue behind SQLite's write lock; writing ones do (BEGIN IMMEDIATE)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.fixtures.servers import Api, ThreadedServer


@contextmanager
def sqlite_write_lock(server: ThreadedServer) -> Iterator[None]:
    url = server.settings.resolved_database_url
    connection = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


def test_search_and_reads_proceed_while_another_process_writes(server: ThreadedServer, api: Api, admin: str) -> None:
    if not server.settings.is_sqlite:
        pytest.skip("SQLite's single writer lock only")
    api.create_group("HR", admin)
    with sqlite_write_lock(server):
        assert api.get("/groups", admin).status_code == 200
        search = api.post("/search", admin, json={"query": "holiday policy", "groups": ["HR"]})
        assert search.status_code == 200, search.text
        assert search.json()["data"] == {"results": []}
        # A writing request waits for the lock (busy_timeout), so it cannot finish while we hold it.
        with pytest.raises(httpx.ReadTimeout):
            api.post("/groups", admin, json={"groupName": "Sales"}, timeout=1.0)
    assert api.post("/groups", admin, json={"groupName": "Legal"}).status_code == 200
