"""The text analyser: the same terms for documents and queries, in several languages."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from privategpt.rag.analyzer import LANGUAGES, fold_diacritics, get_analyzer, supported_languages


def test_english_tokenises_lowercases_drops_stop_words_and_stems() -> None:
    terms = get_analyzer("en").analyze("The Patients were RUNNING to the clinics, and it's raining!")
    assert terms == ["patient", "run", "clinic", "rain"]


def test_english_possessive_and_contractions() -> None:
    assert get_analyzer().analyze("the patient's files; don't") == ["patient", "file"]


def test_hyphens_and_numbers_split_like_words() -> None:
    assert get_analyzer().analyze("IL-6 and COVID-19 in 2020") == ["il", "6", "covid", "19", "2020"]


def test_query_and_document_forms_meet() -> None:
    analyzer = get_analyzer("en")
    assert set(analyzer.analyze("vaccination")) == set(analyzer.analyze("vaccinations"))


@pytest.mark.parametrize(
    ("language", "a", "b"),
    [
        ("de", "München", "Munchen"),
        ("de", "Häuser", "Haus"),
        ("fr", "élève", "eleve"),
        ("es", "canción", "cancion"),
        ("en", "naïve café", "naive cafe"),
    ],
)
def test_diacritics_are_folded_after_stemming(language: str, a: str, b: str) -> None:
    analyzer = get_analyzer(language)
    assert analyzer.analyze(a) == analyzer.analyze(b)


def test_german_stop_words_and_eszett() -> None:
    assert get_analyzer("de").analyze("Die Straße und der Fluss") == get_analyzer("de").analyze("strasse fluss")


def test_french_elision() -> None:
    assert get_analyzer("fr").analyze("l'homme d'affaires") == get_analyzer("fr").analyze("homme affaires")


def test_marks_that_are_part_of_letters_survive() -> None:
    # Devanagari vowel signs are combining marks but part of the word; Cyrillic й is not и.
    assert get_analyzer("hi").analyze("हिन्दी") != get_analyzer("hi").analyze("हनद")
    assert fold_diacritics("й") == "й"
    assert fold_diacritics("ёлка") == "елка"


def test_unspaced_scripts_are_segmented_into_words() -> None:
    terms = get_analyzer("zh").analyze("北京大学 in Beijing")
    assert terms[:1] == ["北京大学"]
    assert "beij" not in terms  # no English stemmer for zh
    assert "beijing" in terms


def test_long_tokens_are_dropped() -> None:
    assert get_analyzer().analyze("x" * 100 + " kept") == ["kept"]


def test_unsupported_language_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported language"):
        get_analyzer("xx")


def test_every_contract_language_analyses() -> None:
    assert "pt-br" in supported_languages()
    for language in LANGUAGES:
        assert get_analyzer(language).analyze("Hello world 42") != []


def test_language_codes_are_normalised_to_one_shared_analyser() -> None:
    assert get_analyzer("PT_BR") is get_analyzer("pt-br")


def test_concurrent_analysis_is_consistent() -> None:
    text = " ".join(f"word{i} runnings jumped" for i in range(2000))
    expected = get_analyzer("en").analyze(text)
    get_analyzer("en")._cache.clear()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: get_analyzer("en").analyze(text), range(8)))
    assert all(r == expected for r in results)


def test_term_frequencies() -> None:
    assert get_analyzer().term_frequencies("cell cells cell division") == {"cell": 3, "divis": 1}
