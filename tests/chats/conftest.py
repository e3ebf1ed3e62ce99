"""Chat fixtures: a fake OpenAI-compatible LLM and a server wired to it (on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.llm_server import FakeLLM, fake_llm
from tests.fixtures.servers import Api, ThreadedServer, running_server

TEST_MODEL = "test-model"


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with fake_llm() as server:
        yield server


@pytest.fixture
def llm_server(make_settings: Any, llm: FakeLLM) -> Iterator[ThreadedServer]:
    with running_server(make_settings(llm_base_url=llm.url, llm_model=TEST_MODEL)) as running:
        yield running


@pytest.fixture
def chat_api(llm_server: ThreadedServer) -> Iterator[Api]:
    """The API of a server whose chats are answered by the fake LLM."""
    client = Api(llm_server.base_url)
    yield client
    client.close()


@pytest.fixture
def chat_admin(chat_api: Api) -> str:
    return chat_api.admin_token()
