"""Reranking through a rerank server (both wire formats): search's `rerank`, the scenario flag, failures.

The rerank server is the suite's fake model server, answering over a real socket; the server under test
talks to it with its production client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from privategpt.config import Settings
from tests.fixtures.llm_server import FakeLLM, fake_llm
from tests.fixtures.servers import Api, running_server
from tests.sources.helpers import canary, create_source, hit_ids, search, wait_settled


@pytest.fixture
def model_server() -> Iterator[FakeLLM]:
    with fake_llm() as server:
        yield server


def _serve(make_settings: Any, **settings: Any) -> Iterator[Api]:
    with running_server(make_settings(**settings)) as server:
        client = Api(server.base_url)
        yield client
        client.close()


@pytest.fixture
def rerank_api(make_settings: Any, model_server: FakeLLM) -> Iterator[Api]:
    yield from _serve(make_settings, rerank_base_url=model_server.url, rerank_model="test-reranker")


def _three_sources(api: Api, token: str) -> tuple[str, list[str]]:
    """Three documents BM25 ranks first to last; only the last says `favourite`."""
    word = canary()
    api.create_group("g", token)
    ids = [
        create_source(api, token, name=f"n{i}", groups=["g"], content=" ".join([word] * (3 - i) + ["filler"] * 5 * i))
        for i in range(2)
    ]
    ids.append(create_source(api, token, name="n2", groups=["g"], content=f"{word} favourite " + "filler " * 20))
    wait_settled(api, token, ids)
    return word, ids


def _prefers_favourite(query: str, text: str) -> float:
    return 0.9 if "favourite" in text else 0.1


def test_search_reranks_on_request(rerank_api: Api, model_server: FakeLLM) -> None:
    admin = rerank_api.admin_token()
    word, ids = _three_sources(rerank_api, admin)
    assert hit_ids(search(rerank_api, admin, word, groups=["g"])) == ids
    assert model_server.rerank_requests == []  # off unless asked for

    model_server.rerank_score = _prefers_favourite
    results = search(rerank_api, admin, word, groups=["g"], rerank=True)
    assert hit_ids(results) == [ids[2], ids[0], ids[1]]
    assert [r["score"] for r in results] == [0.9, 0.1, 0.1]
    [request] = model_server.rerank_requests
    assert request["model"] == "test-reranker" and request["query"] == word
    assert len(request["documents"]) == 3 and all(word in d for d in request["documents"])


def test_a_failing_rerank_server_leaves_the_first_ranking(rerank_api: Api, model_server: FakeLLM) -> None:
    admin = rerank_api.admin_token()
    word, ids = _three_sources(rerank_api, admin)
    model_server.rerank_status = 500
    assert hit_ids(search(rerank_api, admin, word, groups=["g"], rerank=True)) == ids


def test_tei_format_with_raw_scores(make_settings: Any, model_server: FakeLLM) -> None:
    base = model_server.url.removesuffix("/v1")
    for api in _serve(make_settings, rerank_base_url=base, rerank_api="tei"):
        admin = api.admin_token()
        word, ids = _three_sources(api, admin)
        model_server.rerank_score = lambda query, text: 4.0 if "favourite" in text else -4.0
        results = search(api, admin, word, groups=["g"], rerank=True)
        assert hit_ids(results) == [ids[2], ids[0], ids[1]]
        # Logits are mapped into 0..1 like every other score.
        assert results[0]["score"] == pytest.approx(0.982, abs=1e-3)
        assert results[1]["score"] == pytest.approx(0.018, abs=1e-3)
        assert "texts" in model_server.rerank_requests[-1]


def test_the_scenario_flag_reranks_a_chats_passages(rerank_api: Api, model_server: FakeLLM) -> None:
    admin = rerank_api.admin_token()
    word, ids = _three_sources(rerank_api, admin)
    model_server.rerank_score = _prefers_favourite

    def chat_sources(use_reranking: bool) -> list[str]:
        body = {
            "name": "Scn " + uuid.uuid4().hex[:8],
            "description": "reranked",
            "use_reranking": use_reranking,
            "k": 1,
        }
        created = rerank_api.post("/scenarios", admin, json=body)
        assert created.status_code == 200, created.text
        scenario = created.json()["data"]
        chat = rerank_api.post(
            "/chats", admin, json={"question": word, "groups": ["g"], "scenarioId": scenario["scenarioId"]}
        )
        assert chat.status_code == 200, chat.text
        return [s["sourceId"] for s in chat.json()["data"]["sources"]]

    assert chat_sources(use_reranking=False) == [ids[0]]
    assert chat_sources(use_reranking=True) == [ids[2]]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rerank_model": "m"}, "PGPT_RERANK_BASE_URL is not"),
        ({"rerank_base_url": "localhost:8080", "rerank_model": "m"}, "must start with http"),
        ({"rerank_base_url": "http://localhost:8080"}, "PGPT_RERANK_MODEL is required"),
    ],
)
def test_rerank_settings_are_checked(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**values)  # type: ignore[arg-type]
