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
from tests.sources.helpers import create_source, hit_ids, search, wait_settled

CORPUS = json.loads((Path(__file__).parents[1] / "rag" / "resources" / "multilingual.json").read_text())
BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]


class Indexed:
    def __init__(self, api: Api, admin: str, source_ids: dict[str, str]) -> None:
        self.api = api
        self.admin = admin
        self.source_ids = source_ids


@pytest.fixture(scope="module", params=BACKENDS)
def indexed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexed]:
    tmp = tmp_path_factory.mktemp("multilingual")
    cluster: PostgresCluster | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'test.db'}"
    else:
        cluster = request.getfixturevalue("postgres_cluster")
        url = cluster.new_database()
    settings = Settings(**{**TEST_SETTINGS, "data_dir": tmp / "data", "database_url": url})
    with running_server(settings) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        ids = {
            d["language"]: create_source(api, admin, name=d["name"], groups=[], content=d["document"]) for d in CORPUS
        }
        settled = wait_settled(api, admin, list(ids.values()))
        assert {s["state"] for s in settled.values()} == {"vectorized"}
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
    assert hit_ids(search(indexed.api, german, "Trauben", usePublic=True)) == [indexed.source_ids["de"]]
    assert search(indexed.api, indexed.admin, "Trauben", usePublic=True) == []
