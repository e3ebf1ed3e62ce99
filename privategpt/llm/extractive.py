"""The embedded default when no language model is configured: answers by quoting, never by writing.

For each source in the prompt (in the order the retrieval ranked them) the responder quotes, verbatim,
the stretch of its passages that best matches the question: the sentence sharing the most analysed
terms with the question, widened with its neighbours up to a few dozen words. Each quote is a Markdown
block quote under its source's number and name, so the answer cites exactly what the sources list
shows. The only text it writes itself is a fixed sentence that says plainly that no language model is
configured — and, when nothing matched, that there is nothing to quote.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from privategpt.llm.base import Passage, Prompt, Sampling
from privategpt.rag import Analyzer, get_analyzer

# Longest quote, in words, unless a single best sentence is longer (it is then quoted whole).
MAX_QUOTE_WORDS = 80

NO_MODEL = "No language model is configured on this server"
QUOTING = (
    f"{NO_MODEL}, so this answer quotes, word for word, the passages of your documents that best match the question:"
)
NOTHING_FOUND = (
    f"{NO_MODEL}, so answers can only quote your documents, and no passage of the documents available to "
    "this chat matches the question. There is nothing to quote."
)
NOTHING_SEARCHED = (
    f"{NO_MODEL}, so answers can only quote your documents, and this chat does not search any documents "
    "(it uses no group and no public documents, or its scenario retrieves nothing). There is nothing to quote."
)

# Sentence ends (also CJK full stops) and paragraph breaks.
_BOUNDARY = re.compile("(?<=[.!?\u3002\uff01\uff1f])\\s+|\\n\\s*\\n")


class ExtractiveResponder:
    """`LanguageModel` that quotes the best-matching passages verbatim and cites them."""

    async def complete(self, prompt: Prompt, sampling: Sampling) -> str:
        # Analysing whole documents is CPU work: off the event loop.
        return "".join(await asyncio.to_thread(self._pieces, prompt))

    async def stream(self, prompt: Prompt, sampling: Sampling) -> AsyncIterator[str]:
        for piece in await asyncio.to_thread(self._pieces, prompt):
            yield piece

    async def aclose(self) -> None:
        return None

    def _pieces(self, prompt: Prompt) -> list[str]:
        if not prompt.passages:
            return [NOTHING_FOUND if prompt.searched else NOTHING_SEARCHED]
        analyzer = _analyzer(prompt.language)
        query_terms = set(analyzer.analyze(prompt.question))
        by_number: dict[int, list[Passage]] = {}
        for passage in prompt.passages:
            by_number.setdefault(passage.number, []).append(passage)
        pieces = [QUOTING]
        for number, passages in by_number.items():
            quote = best_quote([p.text for p in passages], query_terms, analyzer)
            if not quote:
                continue
            quoted = "\n".join(f"> {line}" if line.strip() else ">" for line in quote.split("\n"))
            pieces.append(f"\n\n[{number}] {passages[0].source_name}\n{quoted}")
        return pieces


def _analyzer(language: str) -> Analyzer:
    try:
        return get_analyzer(language)
    except ValueError:
        return get_analyzer("en")


def _sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences of `text`, without surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for begin, end in spans:
        piece = text[begin:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            out.append((begin + lead, begin + len(piece.rstrip())))
    return out


def best_quote(texts: list[str], query_terms: set[str], analyzer: Analyzer) -> str:
    """The stretch of one of `texts` that best matches the query terms, cut verbatim from it."""
    # (-matching terms, text index, sentence index): the most matches, then the earliest.
    best: tuple[int, int, int] | None = None
    sentences_of: list[list[tuple[int, int]]] = []
    for t_index, text in enumerate(texts):
        sentences = _sentences(text)
        sentences_of.append(sentences)
        for s_index, (begin, end) in enumerate(sentences):
            matches = len(query_terms & set(analyzer.analyze(text[begin:end])))
            candidate = (-matches, t_index, s_index)
            if best is None or candidate < best:
                best = candidate
    if best is None:
        return ""
    _, t_index, s_index = best
    text, sentences = texts[t_index], sentences_of[t_index]

    def words(lo: int, hi: int) -> int:
        return len(text[sentences[lo][0] : sentences[hi][1]].split())

    lo = hi = s_index
    # Widen with the following sentence first (it usually completes the thought), then the preceding one.
    grew = True
    while grew:
        grew = False
        if hi + 1 < len(sentences) and words(lo, hi + 1) <= MAX_QUOTE_WORDS:
            hi += 1
            grew = True
        if lo > 0 and words(lo - 1, hi) <= MAX_QUOTE_WORDS:
            lo -= 1
            grew = True
    return text[sentences[lo][0] : sentences[hi][1]]
