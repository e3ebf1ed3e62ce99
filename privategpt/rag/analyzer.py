"""The project's own text analyser: the same terms on every database, for documents and for queries.

Pipeline per token: Unicode word tokenisation -> case folding -> elision/possessive handling ->
stop-word removal -> Snowball stemming -> diacritic folding. Stemming runs before folding because
the Snowball rules of many languages read the accents (French "é", German "ä"); folding afterwards
makes "Munchen" and "München" meet. Scripts written without spaces go through a word segmenter chosen
by script whatever the language (`privategpt.rag.languages`: jieba for Chinese, MeCab/UniDic for
Japanese, pythainlp for Thai), so Chinese quoted in an English document is still split into words.

`query_terms` reads a query in several languages at once (its detected language and the caller's),
because a short query's language is often unclear while each chunk was analysed in its own.

Analysis runs on every chunk at ingestion and on every query, so the result of each distinct token
is cached: after warm-up a token costs one dict lookup.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache

import snowballstemmer  # type: ignore[import-untyped]

from privategpt.rag import languages, stopwords

# Tokens longer than this are identifiers, hashes or base64; indexing them only bloats the vocabulary.
MAX_TOKEN_CHARS = 64
_CACHE_LIMIT = 500_000
_APOSTROPHES = "'\u2019\u02bc"  # ASCII, typographic and modifier-letter apostrophes

# Han, kana and Thai: written without spaces between words.
_UNSPACED_RANGES = (
    (0x0E00, 0x0E7F),  # Thai
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
)


def _is_unspaced(ch: str) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _UNSPACED_RANGES) or 0x20000 <= o <= 0x2FA1F


def _script(ch: str) -> int:
    """0 for spaced scripts, 1 for Thai, 2 for Han and kana: runs of one class are segmented together."""
    if not _is_unspaced(ch):
        return 0
    return 1 if 0x0E00 <= ord(ch) <= 0x0E7F else 2


def _build_word_class() -> str:
    """A regex character class of letters, digits and combining marks (Python's \\w lacks marks)."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x30, 0x10000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if unicodedata.category(chr(cp))[0] not in "LNM":
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    parts = [re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges]
    # Supplementary planes: historic scripts, mathematical letters and CJK extensions B and later.
    parts.append("\U00010000-\U0001ffff\U00020000-\U0003134f")
    return "[" + "".join(parts) + "]"


_WORD = _build_word_class()
_TOKEN_RE = re.compile(f"{_WORD}+(?:[{_APOSTROPHES}]{_WORD}+)*")

# Letters that are not decomposed by NFD but that users still type without their stroke.
_LETTER_FOLDS = str.maketrans({"ł": "l", "đ": "d", "ø": "o", "æ": "ae", "œ": "oe", "ħ": "h", "ŧ": "t"})
_ARABIC_TATWEEL = "\u0640"


def _strip_mark(base: str, mark: str) -> bool:
    """Whether a combining mark on `base` is an accent users omit, rather than part of the letter."""
    m = ord(mark)
    if 0x0591 <= m <= 0x05C7 or 0x064B <= m <= 0x065F or m == 0x0670:
        return True  # Hebrew points, Arabic harakat: optional vowel signs
    b = ord(base)
    if b < 0x0250 or 0x1E00 <= b <= 0x1EFF or 0x0370 <= b <= 0x03FF:
        return True  # Latin and Greek accents
    # Cyrillic yo is routinely written as ie (U+0435 + diaeresis); short i stays distinct from i.
    return base == "\u0435" and m == 0x0308


def fold_diacritics(term: str) -> str:
    """Remove the accents users routinely leave out, keeping marks that change the letter itself."""
    if term.isascii():
        return term
    term = term.translate(_LETTER_FOLDS).replace(_ARABIC_TATWEEL, "")
    decomposed = unicodedata.normalize("NFD", term)
    out: list[str] = []
    for ch in decomposed:
        if unicodedata.combining(ch) and out and _strip_mark(out[-1], ch):
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


bigram_segmenter = languages.bigrams


@dataclass(frozen=True)
class LanguageProfile:
    """What differs between languages; new languages (or a real segmenter) are added here."""

    code: str
    stemmer: str | None
    stop_words: frozenset[str] = frozenset()
    # Clitics written before an apostrophe: French "l'homme", Italian "dell'arte".
    elisions: frozenset[str] = frozenset()
    # English "patient's": the possessive is dropped rather than glued on.
    possessive_s: bool = False
    # Splits a run of one unspaced script (Thai, or Han and kana) into words.
    segmenter: Callable[[str], list[str]] = field(default=languages.segment)


_SNOWBALL = {
    "en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian",
    "pt": "portuguese", "pt-br": "portuguese", "nl": "dutch", "sv": "swedish", "no": "norwegian",
    "fi": "finnish", "hu": "hungarian", "ro": "romanian", "ru": "russian", "tr": "turkish",
    "ar": "arabic", "el": "greek", "lt": "lithuanian", "cs": "czech", "pl": "polish",
    "id": "indonesian", "hi": "hindi", "fa": "persian", "eo": "esperanto", "et": "estonian",
}  # fmt: skip

# The languages of CONTRACT section 9; those without a Snowball stemmer are tokenised and folded only.
LANGUAGES = (
    "en", "de", "it", "fr", "es", "ar", "bg", "cs", "eo", "et", "el", "fi", "fa", "he", "hi", "hu", "id",
    "ja", "lt", "lv", "nl", "no", "pl", "pt", "pt-br", "ro", "ru", "sk", "sv", "tr", "uk", "zh",
)  # fmt: skip


def _profile(code: str) -> LanguageProfile:
    algorithm = _SNOWBALL.get(code)
    if algorithm is not None and algorithm not in snowballstemmer.algorithms():
        algorithm = None
    base = code.split("-")[0]
    return LanguageProfile(
        code=code,
        stemmer=algorithm,
        stop_words=frozenset(fold_diacritics(w) for w in stopwords.STOP_WORDS.get(base, ())),
        elisions=stopwords.ELISIONS.get(base, frozenset()),
        possessive_s=base == "en",
        # Kanji-only runs are Japanese words in Japanese text (Chinese segmentation would split them).
        segmenter=languages.segment_as_japanese if code == "ja" else languages.segment,
    )


def supported_languages() -> tuple[str, ...]:
    """Language codes the analyser accepts."""
    return LANGUAGES


class Analyzer:
    """Turns text into index terms for one language; safe to share between threads."""

    def __init__(self, profile: LanguageProfile) -> None:
        self.profile = profile
        self.language = profile.code
        self._stemmer = snowballstemmer.stemmer(profile.stemmer) if profile.stemmer else None
        # Snowball stemmer objects keep state while stemming, so concurrent misses take turns.
        self._stem_lock = threading.Lock()
        self._cache: dict[str, tuple[str, ...]] = {}

    def analyze(self, text: str) -> list[str]:
        """Index terms of `text` in order, stop-words removed."""
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        cache = self._cache
        out: list[str] = []
        for token in _TOKEN_RE.findall(text.lower()):
            terms = cache.get(token)
            if terms is None:
                terms = self._analyze_token(token)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[token] = terms
            out.extend(terms)
        return out

    def term_frequencies(self, text: str) -> Counter[str]:
        """Term -> number of occurrences in `text`."""
        return Counter(self.analyze(text))

    def _analyze_token(self, token: str) -> tuple[str, ...]:
        token = unicodedata.normalize("NFKC", token).casefold()
        if any(_is_unspaced(ch) for ch in token):
            return tuple(self._segment(token))
        term = self._single(token)
        return (term,) if term else ()

    def _segment(self, token: str) -> Iterable[str]:
        """Split a token mixing scripts into runs; runs of unspaced scripts go through the segmenter."""
        run: list[str] = []
        script = 0
        for ch in token + " ":
            flag = _script(ch)
            if run and (flag != script or ch == " "):
                piece = "".join(run)
                if script:
                    for word in self.profile.segmenter(piece):
                        if len(word) <= MAX_TOKEN_CHARS and (folded := fold_diacritics(word)):
                            yield folded
                else:
                    term = self._single(piece)
                    if term:
                        yield term
                run = []
            run.append(ch)
            script = flag

    def _single(self, token: str) -> str | None:
        if len(token) > MAX_TOKEN_CHARS:
            return None
        profile = self.profile
        if any(a in token for a in _APOSTROPHES):
            for a in _APOSTROPHES:
                token = token.replace(a, "'")
            head, _, tail = token.partition("'")
            if head in profile.elisions:
                token = tail
            if profile.possessive_s and token.endswith("'s"):
                token = token[:-2]
            token = token.replace("'", "")
        if not token:
            return None
        folded = fold_diacritics(token)
        if folded in profile.stop_words:
            return None
        if self._stemmer is not None and not token.isdigit():
            with self._stem_lock:
                token = self._stemmer.stemWord(token)
        return fold_diacritics(token) or None


def normalize_language(language: str) -> str:
    """The canonical code of a language ("PT_BR" -> "pt-br"); ValueError when unsupported."""
    code = language.strip().lower().replace("_", "-")
    if code not in LANGUAGES:
        raise ValueError(f"unsupported language: {language!r}")
    return code


@cache
def _analyzer_for(code: str) -> Analyzer:
    return Analyzer(_profile(code))


def get_analyzer(language: str = "en") -> Analyzer:
    """The shared analyser of a language (codes of CONTRACT section 9, case-insensitive)."""
    return _analyzer_for(normalize_language(language))


def query_terms(query: str, language: str | None = None) -> Counter[str]:
    """A query's terms, read in its own language where that is clear and else also in `language`.

    Each chunk was analysed in its own language, so a query should be analysed in the language it is
    written in; but a short query's language is often unclear, and then the caller's language (a chat's)
    is the better guess. A query detected with near certainty is read in that language alone; otherwise
    it is read both ways and the terms merged, each term once with its larger frequency, so merging
    never doubles a term's weight. (Measured in docs/retrieval.md: reading a query in the caller's
    language only loses most of the other languages' queries; always merging costs a little where the
    detection was right.)
    """
    hint = normalize_language(language) if language is not None else None
    found = languages.detect(query)
    codes: list[str] = []
    if found is not None and found[1] >= languages.CERTAIN:
        codes.append(found[0])
    else:
        if hint is not None:
            codes.append(hint)
        if found is not None and found[1] >= languages.MIN_CONFIDENCE:
            codes.append(found[0])
    merged: Counter[str] = Counter()
    for code in dict.fromkeys(codes or ["en"]):
        for term, tf in get_analyzer(code).term_frequencies(query).items():
            merged[term] = max(merged[term], tf)
    return merged
