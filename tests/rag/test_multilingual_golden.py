"""Golden ranking on a tiny multilingual corpus: the same text about bees in 33 languages, plus neighbours
on related topics in a few of them. Pins the order and the scores, identical on both databases."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from privategpt.rag import RetrievalScope, index_source, retrieve
from tests.rag.conftest import RESOURCES, add_source

PUBLIC = RetrievalScope(frozenset(), include_public=True)
BEES = json.loads((RESOURCES / "multilingual.json").read_text())
GOLDEN = json.loads((RESOURCES / "multilingual_golden.json").read_text())

EXPECTED = {
    "Wie überwintern Bienen und Wespen?": [
        ("Wespen im Winter", 0.4603),
        ("Bienenhaltung im Sommer", 0.1757),
        ("Honigbienen im Winter", 0.1621),
    ],
    "Platz für Honig im Bienenstock": [("Bienenhaltung im Sommer", 0.5902), ("Honigbienen im Winter", 0.1621)],
    "Le frelon attaque-t-il les abeilles en hiver ?": [
        ("Le frelon asiatique", 0.4821),
        ("Les abeilles en hiver", 0.3542),
    ],
    "冬天蜜蜂和蚂蚁怎样过冬": [("冬天的蚂蚁", 0.5309), ("冬天的蜜蜂", 0.3327), ("夏天的蜂巢", 0.1326)],
    "ミツバチの巣箱と蜂蜜": [("夏の養蜂", 0.5821), ("冬のミツバチ", 0.4101), ("夏天的蜂巢", 0.1927)],
    "Где зимуют осы и пчёлы?": [("Осы зимой", 0.509), ("Пчёлы зимой", 0.4904), ("Пчелите през зимата", 0.1032)],
    "أين يعيش النمل في الشتاء؟": [("النمل في الشتاء", 0.7105), ("النحل في الشتاء", 0.3468)],
    "ผึ้งเก็บน้ำผึ้งในรัง": [("การเลี้ยงผึ้งในฤดูร้อน", 0.5528), ("ผึ้งในฤดูหนาว", 0.5124)],
}


@pytest.fixture
async def corpus(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        for doc in [*BEES, *GOLDEN["documents"]]:
            source_id = await add_source(conn, doc["name"], doc["document"], public=True)
            await index_source(conn, source_id, doc["name"], doc["document"])
    return engine


async def test_multilingual_golden_ranking(corpus: AsyncEngine) -> None:
    async with corpus.connect() as conn:
        for q in GOLDEN["queries"]:
            hits = await retrieve(conn, q["query"], PUBLIC, 3, language=q["language"])
            assert [(h.source_name, round(h.score, 4)) for h in hits] == EXPECTED[q["query"]], q["query"]


async def test_each_language_finds_its_own_text_first(corpus: AsyncEngine) -> None:
    # The caller's language is English throughout: the query's own language must carry it.
    async with corpus.connect() as conn:
        for doc in BEES:
            hits = await retrieve(conn, doc["query"], PUBLIC, 1, language="en")
            assert [h.source_name for h in hits] == [doc["name"]], doc["language"]
