"""POST /search in every language of CONTRACT section 9 (and Thai): the same short text about bees in each
language, all public; a question in one language must find the text in that language first.

One server and one ingestion per database for the whole module: the texts are the fixture, each language
is its own test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from privategpt.config import Settings
from tests.fixtures.servers import TEST_SETTINGS, Api, PostgresCluster, running_server
from tests.sources.helpers import create_source, hit_ids, search, wait_embedded, wait_settled

CORPUS = json.loads((Path(__file__).parents[1] / "rag" / "resources" / "multilingual.json").read_text())
BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]


class Indexed:
    def __init__(self, api: Api, admin: str, source_ids: dict[str, str]) -> None:
        self.api = api
        self.admin = admin
        self.source_ids = source_ids


# BM25 alone on each database; and hybrid retrieval (the default with the bundled embedding model), where
# the 33 translations are near neighbours for the multilingual model, so the words must still decide.
SETUPS = [(backend, "none") for backend in BACKENDS] + [(BACKENDS[0], "local")]


@pytest.fixture(scope="module", params=SETUPS, ids=[f"{b}-{e}" for b, e in SETUPS])
def indexed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexed]:
    backend, embedding = request.param
    tmp = tmp_path_factory.mktemp("multilingual")
    cluster: PostgresCluster | None = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'test.db'}"
    else:
        cluster = request.getfixturevalue("postgres_cluster")
        url = cluster.new_database()
    settings = Settings(
        **{**TEST_SETTINGS, "data_dir": tmp / "data", "database_url": url, "embedding_backend": embedding}
    )
    with running_server(settings) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        ids = {
            d["language"]: create_source(api, admin, name=d["name"], groups=[], content=d["document"]) for d in CORPUS
        }
        settled = wait_settled(api, admin, list(ids.values()))
        assert {s["state"] for s in settled.values()} == {"vectorized"}
        if embedding != "none":
            wait_embedded(api, admin, list(ids.values()))
        yield Indexed(api, admin, ids)
        api.close()
    if cluster is not None:
        cluster.drop_database(url)


@pytest.mark.parametrize("doc", CORPUS, ids=[d["language"] for d in CORPUS])
def test_question_finds_the_text_in_its_language(indexed: Indexed, doc: dict[str, str]) -> None:
    # The admin's language is English: the question's own language must carry it.
    results = search(indexed.api, indexed.admin, doc["query"], usePublic=True, k=3)
    assert hit_ids(results)[0] == indexed.source_ids[doc["language"]]
    assert results[0]["name"] == doc["name"]


def test_a_word_too_short_to_detect_is_read_in_the_callers_language(indexed: Indexed) -> None:
    # "Trauben" (plural) stems to the German text's "Traube" only in German.
    german = indexed.api.user_token(language="de", usePublic=True)
    assert hit_ids(search(indexed.api, german, "Trauben", usePublic=True, mode="sparse")) == [indexed.source_ids["de"]]
    assert search(indexed.api, indexed.admin, "Trauben", usePublic=True, mode="sparse") == []
    # Hybrid retrieval (where a model is configured) still puts it first for the German caller.
    assert hit_ids(search(indexed.api, german, "Trauben", usePublic=True))[0] == indexed.source_ids["de"]
