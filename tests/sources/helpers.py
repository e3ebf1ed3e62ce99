"""Helpers shared by the source tests: creating sources and waiting for ingestion to settle."""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.fixtures.servers import Api

SETTLED = ("vectorized", "error")


def canary() -> str:
    """A word that occurs in exactly one document, so any response that leaks the document shows it."""
    return "cnry" + uuid.uuid4().hex[:12]


def create_source(api: Api, token: str, *, name: str, groups: list[str], content: str) -> str:
    response = api.post("/sources", token, json={"name": name, "groups": groups, "content": content})
    assert response.status_code == 200, response.text
    source_id: str = response.json()["data"]["sourceId"]
    return source_id


def get_source(api: Api, token: str, source_id: str) -> dict[str, Any]:
    response = api.get(f"/sources/{source_id}", token)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def wait_settled(api: Api, token: str, source_ids: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    """Poll until every source has left `processing`; returns each source's last GET data."""
    deadline = time.monotonic() + timeout
    pending = list(source_ids)
    latest: dict[str, dict[str, Any]] = {}
    while pending:
        still = []
        for source_id in pending:
            data = get_source(api, token, source_id)
            latest[source_id] = data
            if data["state"] not in SETTLED:
                still.append(source_id)
        pending = still
        if pending:
            assert time.monotonic() < deadline, f"{len(pending)} source(s) still processing after {timeout} s"
            time.sleep(0.05)
    return latest


def wait_embedded(api: Api, token: str, ids: list[str], timeout: float = 180) -> None:
    """Wait until the sources are indexed and every chunk has its dense vector."""
    wait_settled(api, token, ids)
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        for source_id in list(pending):
            data = get_source(api, token, source_id)
            assert data["embedding"] in ("pending", "done"), data
            if data["embedding"] == "done":
                pending.discard(source_id)
        if pending:
            assert time.monotonic() < deadline, f"sources not embedded in {timeout} s: {pending}"
            time.sleep(0.1)


def search(api: Api, token: str, query: str, **body: Any) -> list[dict[str, Any]]:
    response = api.post("/search", token, json={"query": query, **body})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["data"]["results"]
    return results


def hit_ids(results: list[dict[str, Any]]) -> list[str]:
    return [r["sourceId"] for r in results]
