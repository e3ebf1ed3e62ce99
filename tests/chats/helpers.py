"""Helpers of the chat tests: sources that are searchable, chats, and what they return."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from tests.fixtures.servers import Api


def canary() -> str:
    """A word found in exactly one document: wherever it shows up, that document's text went."""
    return "cnry" + uuid.uuid4().hex[:12]


def add_sources(api: Api, token: str, docs: list[tuple[str, list[str], str]], timeout: float = 60) -> list[str]:
    """Create sources (name, groups, content) and wait until every one is searchable."""
    ids = []
    for name, groups, content in docs:
        response = api.post("/sources", token, json={"name": name, "groups": groups, "content": content})
        assert response.status_code == 200, response.text
        ids.append(response.json()["data"]["sourceId"])
    wait_vectorized(api, token, ids, timeout)
    return ids


def add_source(api: Api, token: str, name: str, content: str, groups: list[str] | None = None) -> str:
    return add_sources(api, token, [(name, groups or [], content)])[0]


def wait_vectorized(api: Api, token: str, ids: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        for source_id in list(pending):
            response = api.get(f"/sources/{source_id}", token)
            assert response.status_code == 200, response.text
            state = response.json()["data"]["state"]
            assert state != "error", response.text
            if state == "vectorized":
                pending.discard(source_id)
        if pending:
            assert time.monotonic() < deadline, f"sources not vectorized in {timeout} s: {pending}"
            time.sleep(0.05)


def new_chat(api: Api, token: str, question: str, **body: Any) -> httpx.Response:
    return api.post("/chats", token, json={"question": question, **body})


def ask_ok(api: Api, token: str, question: str, **body: Any) -> dict[str, Any]:
    """A new chat that must succeed; returns `data`."""
    response = new_chat(api, token, question, **body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def continue_ok(api: Api, token: str, chat_id: str, question: str) -> dict[str, Any]:
    response = api.patch(f"/chats/{chat_id}", token, json={"question": question})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def get_chat(api: Api, token: str, chat_id: str) -> dict[str, Any]:
    response = api.get(f"/chats/{chat_id}", token)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def create_scenario(api: Api, token: str, **fields: Any) -> str:
    body = {"name": "Scenario " + uuid.uuid4().hex[:8], "description": "A test scenario", **fields}
    response = api.post("/scenarios", token, json=body)
    assert response.status_code == 200, response.text
    scenario_id: str = response.json()["data"]["scenarioId"]
    return scenario_id


def system_message(request: dict[str, Any]) -> str:
    messages = request["messages"]
    assert messages[0]["role"] == "system"
    content: str = messages[0]["content"]
    return content


def user_message(request: dict[str, Any]) -> str:
    messages = request["messages"]
    assert messages[-1]["role"] == "user"
    content: str = messages[-1]["content"]
    return content
