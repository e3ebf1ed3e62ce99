"""Dense vectors end to end: embedding after indexing, `embedding` on sources, dense and hybrid search, scopes.

These tests run the real bundled embedding model (the offline default); the documents are few and short,
because it embeds a few passages a second on this machine.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from privategpt.config import Settings
from privategpt.db import Database
from tests.fixtures.llm_server import fake_llm
from tests.fixtures.servers import Api, running_server
from tests.sources.helpers import create_source, get_source, hit_ids, search, wait_embedded, wait_settled

CAT = "The feline dozed all afternoon, curled up on the rug in front of the fireplace."
FINANCE = "Quarterly revenue of the finance department grew by four percent compared with last year."
WEATHER = "Heavy rain and strong winds are expected along the coast tomorrow morning."
# Shares no analysed term with CAT, so BM25 cannot find it: only the meaning connects them.
PARAPHRASE = "cat sleeping near a fire"


@pytest.fixture
def dense_api(make_settings: Any) -> Iterator[Api]:
    with running_server(make_settings(embedding_backend="local")) as server:
        client = Api(server.base_url)
        yield client
        client.close()


def test_sources_are_searchable_by_bm25_at_once_and_by_meaning_once_embedded(dense_api: Api) -> None:
    admin = dense_api.admin_token()
    dense_api.create_group("home", admin)
    ids = [
        create_source(dense_api, admin, name=f"doc {i}", groups=["home"], content=c)
        for i, c in enumerate([CAT, FINANCE, WEATHER])
    ]
    settled = wait_settled(dense_api, admin, ids)
    assert all(d["state"] == "vectorized" and d["embedding"] in ("pending", "done") for d in settled.values())
    wait_embedded(dense_api, admin, ids)

    assert search(dense_api, admin, PARAPHRASE, groups=["home"], mode="sparse") == []
    dense = search(dense_api, admin, PARAPHRASE, groups=["home"], mode="dense")
    assert hit_ids(dense)[0] == ids[0]
    assert 1 >= dense[0]["score"] > dense[1]["score"] >= 0
    # The default (no mode) is hybrid, what the default scenario runs.
    assert hit_ids(search(dense_api, admin, PARAPHRASE, groups=["home"]))[0] == ids[0]
    # Words still count in hybrid mode: an exact keyword ranks its document first.
    assert hit_ids(search(dense_api, admin, "quarterly revenue", groups=["home"]))[0] == ids[1]


def test_dense_retrieval_keeps_to_the_callers_scope(dense_api: Api) -> None:
    admin = dense_api.admin_token()
    dense_api.create_group("mine", admin)
    dense_api.create_group("theirs", admin)
    mine = create_source(dense_api, admin, name="mine", groups=["mine"], content=WEATHER)
    # Many documents closer to the query than the visible one, none of them visible to the member.
    theirs = [
        create_source(dense_api, admin, name=f"t{i}", groups=["theirs"], content=f"{CAT} ({i})") for i in range(12)
    ]
    wait_embedded(dense_api, admin, [mine, *theirs])
    member = dense_api.user_token(groups=["mine"])
    for mode in ("dense", "hybrid"):
        assert hit_ids(search(dense_api, member, PARAPHRASE, groups=["mine"], mode=mode, k=5)) == [mine]
        # The admin, who sees all of them, gets k results.
        everything = search(dense_api, admin, PARAPHRASE, groups=["mine", "theirs"], mode=mode, k=5)
        assert len(everything) == 5 and mine not in hit_ids(everything)


def test_a_deleted_or_edited_source_leaves_dense_retrieval_at_once(dense_api: Api) -> None:
    admin = dense_api.admin_token()
    dense_api.create_group("g", admin)
    cat, weather = (
        create_source(dense_api, admin, name=n, groups=["g"], content=c)
        for n, c in (("notes", CAT), ("forecast", WEATHER))
    )
    wait_embedded(dense_api, admin, [cat, weather])
    assert hit_ids(search(dense_api, admin, PARAPHRASE, groups=["g"], mode="dense"))[0] == cat

    response = dense_api.patch(f"/sources/{cat}", admin, json={"content": FINANCE})
    assert response.status_code == 200, response.text
    wait_embedded(dense_api, admin, [cat])
    assert hit_ids(search(dense_api, admin, "revenue growth of a department", groups=["g"], mode="dense"))[0] == cat

    assert dense_api.delete(f"/sources/{cat}", admin).status_code == 200
    assert hit_ids(search(dense_api, admin, "revenue growth of a department", groups=["g"], mode="dense")) == [weather]


def test_scenario_flags_select_the_retrieval(dense_api: Api) -> None:
    admin = dense_api.admin_token()
    dense_api.create_group("g", admin)
    cat = create_source(dense_api, admin, name="notes", groups=["g"], content=CAT)
    wait_embedded(dense_api, admin, [cat])

    def chat_sources(**flags: bool) -> list[str]:
        body = {"name": "Scn " + uuid.uuid4().hex[:8], "description": "flags", **flags}
        scenario = dense_api.post("/scenarios", admin, json=body)
        assert scenario.status_code == 200, scenario.text
        chat = dense_api.post(
            "/chats",
            admin,
            json={"question": PARAPHRASE, "groups": ["g"], "scenarioId": scenario.json()["data"]["scenarioId"]},
        )
        assert chat.status_code == 200, chat.text
        return [s["sourceId"] for s in chat.json()["data"]["sources"]]

    assert chat_sources(use_sparse=True, use_dense=False) == []
    assert chat_sources(use_sparse=False, use_dense=True) == [cat]
    assert chat_sources(use_sparse=True, use_dense=True) == [cat]


def test_without_an_embedding_model_sources_say_disabled_and_search_is_bm25(api: Api, admin: str) -> None:
    api.create_group("g", admin)
    cat = create_source(api, admin, name="notes", groups=["g"], content=CAT)
    assert wait_settled(api, admin, [cat])[cat]["embedding"] == "disabled"
    # Asking for dense retrieval without a model falls back to BM25 rather than failing.
    assert search(api, admin, PARAPHRASE, groups=["g"], mode="dense") == []
    assert hit_ids(search(api, admin, "feline rug", groups=["g"], mode="dense")) == [cat]


def _models(settings: Settings) -> list[tuple[str, int, str, int]]:
    """(name, dimension, state, vectors) of every embedding model, read straight from the database."""

    async def read() -> list[tuple[str, int, str, int]]:
        database = Database(settings)
        try:
            async with database.engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT m.name, m.dimension, m.state,"
                        " (SELECT count(*) FROM rag_vectors v WHERE v.model_id = m.id)"
                        " FROM rag_embedding_models m ORDER BY m.id"
                    )
                )
                return [(r[0], r[1], r[2], r[3]) for r in rows]
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_a_new_model_is_built_beside_the_old_one_and_switched_to_when_complete(make_settings: Any) -> None:
    local = make_settings(embedding_backend="local")
    with running_server(local) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        api.create_group("g", admin)
        ids = [create_source(api, admin, name=f"d{i}", groups=["g"], content=c) for i, c in enumerate([CAT, WEATHER])]
        wait_embedded(api, admin, ids)
        api.close()
    [(name, dimension, state, count)] = _models(local)
    assert (dimension, state, count) == (384, "active", 2)

    with fake_llm() as model_server:
        model_server.embedding_dimension = 16
        model_server.embedding_gate = threading.Event()
        remote = make_settings(
            embedding_backend="openai",
            embedding_base_url=model_server.url,
            embedding_model="other-model",
            embedding_dimension=16,
        )
        with running_server(remote) as server:
            api = Api(server.base_url)
            admin = api.admin_token()
            # Until the new model is complete, the old one stays in service and retrieval does not mix them:
            # the new model's queries cannot be compared with the old vectors, so search falls back to BM25.
            assert {get_source(api, admin, i)["embedding"] for i in ids} == {"pending"}
            assert [m[:3] for m in _models(remote)] == [(name, 384, "active"), ("other-model", 16, "building")]
            assert hit_ids(search(api, admin, "feline rug", groups=["g"], mode="dense")) == [ids[0]]
            model_server.embedding_gate.set()
            wait_embedded(api, admin, ids)
            assert _models(remote) == [(name, 384, "retired", 0), ("other-model", 16, "active", 2)]
            assert len(search(api, admin, PARAPHRASE, groups=["g"], mode="dense")) == 2
            api.close()
