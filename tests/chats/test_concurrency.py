"""Many questions at once: a question waiting for its embedding or for the model holds no database connection.

With dense retrieval every question is embedded first, and an embedder serves one question at a time: most
of a crowd of questions waits in its queue. Were they to wait holding a database connection, the pool would
run dry and every other request (here `GET /groups`) would wait for a question to finish first.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.chats.conftest import TEST_MODEL
from tests.chats.helpers import add_source
from tests.fixtures.llm_server import FakeLLM
from tests.fixtures.servers import Api, running_server
from tests.sources.helpers import wait_embedded

NOTES = "The quarterly maintenance window of the cooling system starts on the first Monday of each quarter."
# More questions than either pool has connections: SQLite's 16, and PostgreSQL's 2 + 2 here.
QUESTIONS = 20


def _wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_questions_waiting_for_their_embedding_hold_no_database_connection(make_settings: Any, llm: FakeLLM) -> None:
    settings = make_settings(
        llm_base_url=llm.url,
        llm_model=TEST_MODEL,
        # The fake server is also the embedding server, so the test decides when question embeddings come back.
        embedding_backend="openai",
        embedding_base_url=llm.url,
        embedding_model="test-embedder",
        embedding_dimension=llm.embedding_dimension,
        db_pool_size=2,
    )
    with running_server(settings) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        api.create_group("ops", admin)
        source = add_source(api, admin, "maintenance", NOTES, ["ops"])
        wait_embedded(api, admin, [source])
        # Half the questions continue chats (which take the chat's lock first), half start new ones.
        chats = [
            api.post("/chats", admin, json={"question": "When is maintenance?", "groups": ["ops"]}).json()["data"][
                "chatId"
            ]
            for _ in range(QUESTIONS // 2)
        ]
        embedded_before = len(llm.embedding_requests)
        llm.embedding_gate = threading.Event()

        def ask(i: int) -> httpx.Response:
            client = Api(server.base_url)
            try:
                path = f"/chats/{chats[i]}" if i < len(chats) else "/chats"
                body: dict[str, Any] = {"question": f"Cooling system maintenance, question {i}?"}
                if i >= len(chats):
                    body["groups"] = ["ops"]
                return client.post(path, admin, json=body)
            finally:
                client.close()

        with ThreadPoolExecutor(QUESTIONS) as pool:
            try:
                answers = [pool.submit(ask, i) for i in range(QUESTIONS)]
                _wait_for(
                    lambda: len(llm.embedding_requests) >= embedded_before + QUESTIONS, "every question's embedding"
                )
                # Every question now waits for its embedding; the database is free for other requests.
                groups = api.get("/groups", admin, timeout=30)
                assert groups.status_code == 200, groups.text
                chat = api.get(f"/chats/{chats[0]}", admin, timeout=30)
                assert chat.status_code == 200 and chat.json()["data"]["isLocked"] is True
            finally:
                llm.embedding_gate.set()
            for answer in answers:
                response = answer.result()
                assert response.status_code == 200, response.text
                assert [s["sourceId"] for s in response.json()["data"]["sources"]] == [source]
        assert len(llm.requests) == QUESTIONS // 2 + QUESTIONS
        api.close()
