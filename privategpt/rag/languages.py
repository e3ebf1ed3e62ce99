"""Language detection and word segmentation for scripts written without spaces.

Detection is py3langid (a naive Bayes model of byte n-grams that ships inside the package) restricted to
the languages of CONTRACT section 9, so a text is never assigned a language the analyser has no profile
for. Segmentation is chosen by script, not by language, because a document detected as English may still
quote Chinese: Thai goes through pythainlp's dictionary segmenter (newmm), Han and kana through MeCab
with UniDic-lite (fugashi) when the text is Japanese and through jieba when it is Chinese. Every model
and dictionary is loaded on first use only, so a deployment that never sees such text never pays for it;
when a package is missing, overlapping character bigrams take over (worse ranking, never an error).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# The analyser's codes py3langid can tell apart ("pt-br" is Portuguese to it: same analysis).
DETECTABLE = (
    "en", "de", "it", "fr", "es", "ar", "bg", "cs", "eo", "et", "el", "fi", "fa", "he", "hi", "hu", "id",
    "ja", "lt", "lv", "nl", "no", "pl", "pt", "ro", "ru", "sk", "sv", "tr", "uk", "zh",
)  # fmt: skip

# Below this many letters a text's n-gram statistics say little (a heading, a name, a short query).
MIN_LETTERS = 12
# Posterior probability (over the restricted language set) needed to trust a detection: whole sentences
# come out at 0.9 and above, two-word phrases at 0.1-0.5.
MIN_CONFIDENCE = 0.6
# A query detected at this probability is read in its detected language alone (see analyzer.query_terms).
CERTAIN = 0.95
# Detection reads this much of a text: more changes nothing but costs linearly.
_SAMPLE_CHARS = 300

_THAI = re.compile("[\u0e00-\u0e7f]")
_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def _load(name: str, loader: Callable[[], Any]) -> Any:
    """Load a model once per process; a failed import is remembered as None."""
    try:
        return _loaded[name]
    except KeyError:
        pass
    with _lock:
        if name not in _loaded:
            try:
                _loaded[name] = loader()
            except Exception as error:
                # A model that cannot load (package missing, data directory unwritable) degrades
                # analysis to the fallback; it must never fail an ingestion or a query.
                logger.warning("%s is unavailable (%s); falling back", name, error)
                _loaded[name] = None
        return _loaded[name]


_HAN_OR_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")


def ready_for(text: str) -> bool:
    """Whether analysing `text` needs no model loaded first (a first load takes a second or more, which an
    event loop must not wait for)."""
    needed = ["py3langid"]
    if _THAI.search(text):
        needed.append("pythainlp")
    if _HAN_OR_KANA.search(text):
        needed += ["jieba", "fugashi"]
    return all(name in _loaded for name in needed)


def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier  # type: ignore[import-untyped]

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(DETECTABLE))
    # The full matrix of all 97 languages (27 MB) is kept only to undo the restriction, never done here.
    if hasattr(identifier, "_full_model"):
        identifier._full_model = (identifier.nb_ptc, identifier.nb_pc, identifier.nb_classes)
    return identifier


def detect(text: str) -> tuple[str, float] | None:
    """The most probable language of `text` and its probability, or None when the text is too short."""
    sample = text[:_SAMPLE_CHARS]
    # Counted in C (map, regex): a loop over characters here cost as much as the detection itself.
    letters = sum(map(str.isalpha, sample))
    if letters < MIN_LETTERS:
        return None
    if 2 * len(_THAI.findall(sample)) > letters:
        # Thai has no profile among the contract's languages (its segmentation goes by script anyway):
        # naming another language here would only mislabel the chunk.
        return None
    identifier = _load("py3langid", _identifier)
    if identifier is None:
        return None
    code, probability = identifier.classify(sample)
    return str(code), float(probability)


def detect_confident(text: str) -> str | None:
    """The language of `text` when detection is trustworthy, else None."""
    found = detect(text)
    if found is None or found[1] < MIN_CONFIDENCE:
        return None
    return found[0]


def assign_languages(texts: list[str], default: str) -> list[str]:
    """The language of each chunk of one document.

    A chunk detected with confidence keeps its language (documents may mix languages); the others
    (headings, tables, names) take the language most of the document's chunks were detected in, or that
    of the whole text, or `default` when nothing can be told. A Brazilian default stays Brazilian.
    """
    detected = [detect_confident(t) for t in texts]
    confident = [d for d in detected if d is not None]
    fallback = default
    if len(confident) < len(texts):
        if confident:
            fallback = max(sorted(set(confident)), key=confident.count)
        else:
            fallback = detect_confident(" ".join(texts)) or default
    return [_keep_variant(d or fallback, default) for d in detected]


def _keep_variant(code: str, default: str) -> str:
    return default if code == "pt" and default == "pt-br" else code


# -- segmentation ----------------------------------------------------------------------------------

# Function words that survive segmentation and would otherwise weigh on every Chinese query.
_ZH_STOP_WORDS = frozenset(
    "的 了 着 过 是 在 和 与 及 并 也 都 而 就 这 那 之 其 或 等 被 把 对 于 从 为 以 个 吗 呢 吧 啊 么 "
    "什么 哪 哪里 哪个 谁 多少 怎么 如何 为什么 一个 这个 那个 这些 那些 他 她 它 他们 我 我们 你 有".split()
)
# UniDic parts of speech that carry no content: particles, auxiliary verbs, symbols, blanks.
_JA_SKIP_POS = frozenset({"助詞", "助動詞", "補助記号", "記号", "空白"})


def bigrams(run: str) -> list[str]:
    """Overlapping character bigrams: the script-agnostic fallback for text without spaces."""
    if len(run) < 2:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


def _jieba() -> Any:
    import jieba  # type: ignore[import-untyped]

    jieba.setLogLevel(logging.WARNING)  # it logs its dictionary load at INFO
    jieba.initialize()
    return jieba


def _mecab() -> tuple[Any, threading.Lock]:
    import fugashi  # type: ignore[import-untyped]
    import unidic_lite  # type: ignore[import-untyped]

    # The bundled dictionary by path, so an installed-but-not-downloaded full `unidic` is never picked.
    # A MeCab tagger keeps state between calls, hence its own lock.
    return fugashi.Tagger(f'-r /dev/null -d "{unidic_lite.DICDIR}"'), threading.Lock()


def _thai() -> tuple[Callable[..., list[str]], frozenset[str]]:
    from pythainlp.corpus.common import thai_stopwords
    from pythainlp.tokenize import word_tokenize

    return word_tokenize, frozenset(thai_stopwords())


def segment_chinese(run: str) -> list[str]:
    """Words of a run of Han characters (jieba's dictionary, and its HMM for unknown words)."""
    jieba = _load("jieba", _jieba)
    if jieba is None:
        return bigrams(run)
    return [w for w in jieba.lcut(run) if w.strip() and w not in _ZH_STOP_WORDS]


def segment_japanese(run: str) -> list[str]:
    """Content words of a run of Han and kana, in their dictionary form (MeCab with UniDic-lite)."""
    loaded = _load("fugashi", _mecab)
    if loaded is None:
        return bigrams(run)
    tagger, lock = loaded
    out: list[str] = []
    with lock:
        for word in tagger(run):
            feature = word.feature
            if feature.pos1 in _JA_SKIP_POS:
                continue
            # The written base form folds inflections (食べ, 食べた -> 食べる) and keeps the script.
            base = feature.orthBase
            out.append(base if base and base != "*" else word.surface)
    return out


def segment_thai(run: str) -> list[str]:
    """Words of a run of Thai (pythainlp's newmm over its bundled dictionary), stop-words removed."""
    loaded = _load("pythainlp", _thai)
    if loaded is None:
        return bigrams(run)
    word_tokenize, stop_words = loaded
    return [w for w in word_tokenize(run, engine="newmm", keep_whitespace=False) if w.strip() and w not in stop_words]


def _is_kana(ch: str) -> bool:
    o = ord(ch)
    return 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9F


def segment(run: str, japanese: bool = False) -> list[str]:
    """Words of a run of one unspaced script (Thai, or Han and kana). Han text is read as Japanese when
    it has kana or when `japanese` (the text's language) says so, else as Chinese."""
    if not run:
        return []
    if 0x0E00 <= ord(run[0]) <= 0x0E7F:
        return segment_thai(run)
    if japanese or any(_is_kana(ch) for ch in run):
        return segment_japanese(run)
    return segment_chinese(run)


def segment_as_japanese(run: str) -> list[str]:
    """`segment` for text known to be Japanese, kanji-only runs included."""
    return segment(run, japanese=True)
