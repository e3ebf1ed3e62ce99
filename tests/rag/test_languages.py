"""Language detection, segmentation of unspaced scripts, per-chunk languages and query analysis."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from privategpt.rag import RetrievalScope, index_source, retrieve
from privategpt.rag.analyzer import get_analyzer, query_terms
from privategpt.rag.languages import (
    _load,
    assign_languages,
    bigrams,
    detect,
    detect_confident,
    ready_for,
    segment,
    segment_as_japanese,
)
from privategpt.rag.retrieval import prepare_source
from tests.rag.conftest import RESOURCES, add_source

PUBLIC = RetrievalScope(frozenset(), include_public=True)
CORPUS = json.loads((RESOURCES / "multilingual.json").read_text())
CONTRACT = [d for d in CORPUS if d["language"] != "th"]

ENGLISH = "Vaccination schedules are reviewed every year by the national health authority."
GERMAN = "Die Impfpläne werden jedes Jahr von der nationalen Gesundheitsbehörde überprüft."


@pytest.mark.parametrize("doc", CONTRACT, ids=[d["language"] for d in CONTRACT])
def test_each_contract_language_is_detected(doc: dict[str, str]) -> None:
    # Portuguese is one language to the detector; a Brazilian default keeps chunks Brazilian.
    expected = "pt" if doc["language"] == "pt-br" else doc["language"]
    assert detect_confident(doc["document"]) == expected
    assert assign_languages([doc["document"]], "pt-br" if expected == "pt" else "en") == [
        "pt-br" if expected == "pt" else expected
    ]


def test_short_or_thai_text_is_not_guessed() -> None:
    assert detect("Hallo") is None
    assert detect("42 17 99 -- ** ..") is None
    # Thai is segmented by script; no contract language should be claimed for it.
    assert detect(next(d["document"] for d in CORPUS if d["language"] == "th")) is None


def test_mixed_document_chunks_keep_their_own_language() -> None:
    # The heading-only chunk is too short to tell and takes the document's majority language.
    texts = [ENGLISH, GERMAN, "Anhang", GERMAN + " " + GERMAN]
    assert assign_languages(texts, "en") == ["en", "de", "de", "de"]
    assert assign_languages(["Anhang", "42"], "fr") == ["fr", "fr"]


def test_prepare_source_analyses_each_chunk_in_its_language() -> None:
    markdown = f"# Policy\n\n{ENGLISH}\n\n# Richtlinie\n\n{GERMAN}\n"
    prepared = prepare_source("Policy", markdown, "en")
    assert [c.language for c in prepared.chunks] == ["en", "de"]
    # German stemming on the German chunk: "Jahr" and "Jahren" meet, "Impfpläne" and "Impfplan".
    assert get_analyzer("de").analyze("Jahren Impfplan") == ["jahr", "impfplan"]
    assert {"jahr", "impfplan"} <= set(prepared.chunks[1].terms)
    assert get_analyzer("en").analyze("reviewed")[0] in prepared.chunks[0].terms


async def test_chunk_languages_are_stored(engine: AsyncEngine) -> None:
    markdown = f"# Policy\n\n{ENGLISH}\n\n# Richtlinie\n\n{GERMAN}\n"
    async with engine.begin() as conn:
        source_id = await add_source(conn, "Policy", markdown, public=True)
        await index_source(conn, source_id, "Policy", markdown)
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT language FROM rag_chunks WHERE source_id = :s ORDER BY ordinal"), {"s": source_id}
        )
        assert [r[0] for r in rows] == ["en", "de"]
        # A German query from an English-speaking caller still meets the German chunk's stems.
        [hit] = await retrieve(conn, "Wer überprüft die Impfpläne?", PUBLIC, 1, language="en")
        assert hit.text == GERMAN


def test_query_in_a_clear_language_is_read_in_it_alone() -> None:
    terms = query_terms("Wie werden die Impfpläne jedes Jahr überprüft?", "en")
    assert set(terms) == set(get_analyzer("de").analyze("Wie werden die Impfpläne jedes Jahr überprüft?"))


def test_short_query_is_read_in_the_callers_language_too() -> None:
    # Too short to detect: the caller's language decides.
    assert set(query_terms("Impfpläne", "de")) == {get_analyzer("de").analyze("Impfpläne")[0]}
    assert set(query_terms("running shoes", "en")) == {"run", "shoe"}
    assert set(query_terms("running shoes")) == {"run", "shoe"}


def test_query_terms_count_once() -> None:
    assert query_terms("cell cells cell", "en") == {"cell": 3}


def test_chinese_is_segmented_into_words() -> None:
    assert segment("北京是中华人民共和国的首都") == ["北京", "中华人民共和国", "首都"]
    assert get_analyzer("zh").analyze("蜜蜂在冬天怎样保持蜂巢温暖") == ["蜜蜂", "冬天", "怎样", "保持", "蜂巢", "温暖"]


def test_japanese_is_segmented_into_dictionary_forms() -> None:
    # Particles and auxiliaries dropped; inflected verbs in their dictionary form.
    assert segment("私たちは昨日ラーメンを食べました") == ["私", "たち", "昨日", "ラーメン", "食べる"]
    assert get_analyzer("ja").analyze("巣箱を暖かく保ちます") == ["巣箱", "暖かい", "保つ"]


def test_kanji_only_runs_follow_the_texts_language() -> None:
    assert segment_as_japanese("東京都人口") == ["東京", "都", "人口"]
    assert segment("東京都人口") == ["東", "京都", "人口"]
    # Kana marks a run as Japanese whatever the chunk's language.
    assert segment("東京都の人口") == ["東京", "都", "人口"]


def test_thai_is_segmented_into_words() -> None:
    assert segment("กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย") == ["กรุงเทพมหานคร", "เมืองหลวง", "ประเทศ", "ไทย"]


def test_segmentation_applies_whatever_the_language() -> None:
    for language in ("en", "de", "ru"):
        assert get_analyzer(language).analyze("The 蜜蜂 hive") == [
            *get_analyzer(language).analyze("The"),
            "蜜蜂",
            *get_analyzer(language).analyze("hive"),
        ]


def test_a_segmenter_that_cannot_load_falls_back() -> None:
    def broken() -> None:
        raise ImportError("not installed")

    assert _load("test-broken-segmenter", broken) is None
    assert bigrams("北京大学") == ["北京", "京大", "大学"]
    assert bigrams("北") == ["北"]


def test_ready_for_tells_when_models_are_loaded() -> None:
    detect("Vaccination schedules are reviewed every year.")
    assert ready_for("plain English words")
    segment("北京")
    segment("東京の")
    segment("กรุงเทพ")
    assert ready_for("北京 東京の กรุงเทพ")
