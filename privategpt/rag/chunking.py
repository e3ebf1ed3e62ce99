"""Markdown -> chunks along the heading structure, of bounded size, for indexing and for the LLM prompt.

Sizes are counted in whitespace-separated words (about 1.3 LLM tokens each in English), which needs no
tokenizer and is stable across models.

Rules:
* A chunk never spans two sections, except that small consecutive sections below the same heading are
  merged (the chunk keeps the shared heading path, the headings below it become Markdown heading lines
  in the text), so a FAQ of one-line answers does not become a hundred one-line chunks.
* A chunk's `heading_path` is the list of headings above its text; the heading itself is not repeated
  in `text`.
* Fenced code blocks and tables are atomic. Only one larger than `max_block_words` is split, between
  lines or rows, and every piece is re-fenced or repeats the table header so it stays valid Markdown.
* A section longer than `target_words` is split at block, then sentence, then word boundaries; each
  following piece starts with the last `overlap_words` words (whole sentences) of the previous one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_TABLE_DELIMITER = re.compile(r"^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-+*]|\d{1,9}[.)])(?:[ \t]|$)")
_SENTENCE_END = re.compile("(?<=[.!?\u3002\uff01\uff1f])\\s+")  # also CJK full stops


@dataclass(frozen=True)
class ChunkingOptions:
    """Size bounds in words; the defaults suit BM25 and small-context LLM prompts alike."""

    target_words: int = 250
    overlap_words: int = 30
    # A section smaller than this is merged into a neighbouring one below the same heading.
    min_words: int = 60
    # Code blocks and tables up to this size are never split.
    max_block_words: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.overlap_words < self.target_words:
            raise ValueError("overlap_words must be below target_words")
        if self.target_words < 1 or self.max_block_words < self.target_words:
            raise ValueError("need 1 <= target_words <= max_block_words")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document as indexed and as shown to the LLM."""

    ordinal: int
    heading_path: tuple[str, ...]
    text: str
    n_words: int


@dataclass(frozen=True)
class _Block:
    kind: str  # "text" | "code" | "table"
    text: str
    n_words: int


@dataclass
class _Section:
    level: int
    path: tuple[str, ...]
    blocks: list[_Block]


def count_words(text: str) -> int:
    """Whitespace-separated words: the size unit of chunks."""
    return len(text.split())


def _block(kind: str, lines: list[str]) -> _Block:
    text = "\n".join(lines).strip("\n")
    return _Block(kind, text, count_words(text))


def _clean_heading(text: str) -> str:
    return " ".join(text.strip().split())


def _parse(markdown: str) -> list[_Section]:
    """Split Markdown into sections (one per heading) made of text, code and table blocks."""
    lines = markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    sections = [_Section(0, (), [])]
    stack: list[tuple[int, str]] = []
    para: list[str] = []

    def flush_para() -> None:
        if para and any(p.strip() for p in para):
            sections[-1].blocks.append(_block("text", para))
        para.clear()

    def open_section(level: int, title: str) -> None:
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        sections.append(_Section(level, tuple(t for _, t in stack if t), []))

    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE_OPEN.match(line)
        if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
            flush_para()
            marker = fence.group(1)
            close = re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
            j = i + 1
            while j < len(lines) and not close.match(lines[j]):
                j += 1
            sections[-1].blocks.append(_block("code", lines[i : j + 1]))
            i = j + 1
            continue
        atx = _ATX.match(line)
        if atx:
            flush_para()
            open_section(len(atx.group(1)), _clean_heading(atx.group(2) or ""))
            i += 1
            continue
        if (
            "|" in line
            and i + 1 < len(lines)
            and _TABLE_DELIMITER.match(lines[i + 1])
            and "|" in lines[i + 1] + line.strip()[1:]
        ):
            flush_para()
            j = i + 2
            while j < len(lines) and lines[j].strip() and "|" in lines[j]:
                j += 1
            sections[-1].blocks.append(_block("table", lines[i:j]))
            i = j
            continue
        setext = _SETEXT.match(line)
        if setext and para and not _LIST_ITEM.match(para[0]) and para[-1].strip():
            title = _clean_heading(" ".join(para))
            para.clear()
            open_section(1 if setext.group(1)[0] == "=" else 2, title)
            i += 1
            continue
        if not line.strip():
            flush_para()
        else:
            para.append(line)
        i += 1
    flush_para()
    return [s for s in sections if s.blocks or s.level == 0]


def _split_atomic(block: _Block, limit: int) -> list[_Block]:
    """Split an oversize code block or table between lines/rows, keeping each piece valid Markdown."""
    lines = block.text.split("\n")
    if block.kind == "code":
        head, tail = [lines[0]], [lines[-1]] if len(lines) > 1 and _is_fence_close(lines[0], lines[-1]) else []
        body = lines[1 : len(lines) - len(tail)]
        if not tail:
            tail = [lines[0].strip()[: len(_FENCE_OPEN.match(lines[0]).group(1))]]  # type: ignore[union-attr]
    else:
        head, tail, body = lines[:2], [], lines[2:]
    budget = max(1, limit - count_words("\n".join(head)))
    pieces: list[_Block] = []
    current: list[str] = []
    size = 0
    for line in body:
        n = count_words(line)
        if current and size + n > budget:
            pieces.append(_block(block.kind, head + current + tail))
            current, size = [], 0
        current.append(line)
        size += n
    if current or not pieces:
        pieces.append(_block(block.kind, head + current + tail))
    return pieces


def _is_fence_close(open_line: str, line: str) -> bool:
    m = _FENCE_OPEN.match(open_line)
    if not m:
        return False
    marker = m.group(1)
    return re.fullmatch(rf" {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*", line) is not None


def _sentences(text: str) -> list[str]:
    """Sentences, or lines for list-like text; single over-long sentences are cut into word runs."""
    parts: list[str] = []
    for line in text.split("\n"):
        parts.extend(p for p in _SENTENCE_END.split(line) if p.strip())
    return parts


def _split_text(block: _Block, target: int) -> list[str]:
    """Cut an over-long text block into sentence-aligned units no longer than `target` words each."""
    units: list[str] = []
    for sentence in _sentences(block.text):
        words = sentence.split()
        if len(words) <= target:
            units.append(sentence)
        else:
            units.extend(" ".join(words[i : i + target]) for i in range(0, len(words), target))
    return units


def _overlap_tail(units: list[tuple[str, str]], overlap: int) -> list[tuple[str, str]]:
    """The trailing prose of a finished chunk worth at most `overlap` words (never code or tables)."""
    tail: list[tuple[str, str]] = []
    size = 0
    for kind, text in reversed(units):
        if kind == "block":
            break
        n = count_words(text)
        if size + n <= overlap:
            tail.insert(0, (kind, text))
            size += n
            continue
        # Too long to repeat whole: keep its last sentences that fit.
        kept: list[str] = []
        for sentence in reversed(_sentences(text)):
            m = count_words(sentence)
            if size + m > overlap:
                break
            kept.insert(0, sentence)
            size += m
        if kept:
            tail.insert(0, ("sentence-start", kept[0]))
            tail[1:1] = [("sentence", k) for k in kept[1:]]
        break
    return tail


def _join(units: list[tuple[str, str]]) -> str:
    """Join units: consecutive sentences of one paragraph with a space, blocks with a blank line."""
    out: list[str] = []
    prev_kind = ""
    for kind, text in units:
        if not out:
            out.append(text)
        elif kind == "sentence" and prev_kind == "sentence":
            out.append(" " + text)
        else:
            out.append("\n\n" + text)
        prev_kind = kind if kind != "sentence-start" else "sentence"
    return "".join(out)


def _section_pieces(section: _Section, options: ChunkingOptions) -> Iterator[str]:
    """The texts of one section's chunks, packed greedily up to the target size."""
    target = options.target_words
    units: list[tuple[str, str]] = []  # (kind, text); "sentence-start" opens a new paragraph
    for block in section.blocks:
        if block.kind != "text":
            pieces = [block] if block.n_words <= options.max_block_words else _split_atomic(block, target)
            units.extend(("block", p.text) for p in pieces)
        elif block.n_words <= target:
            units.append(("para", block.text))
        else:
            parts = _split_text(block, target)
            units.append(("sentence-start", parts[0]))
            units.extend(("sentence", p) for p in parts[1:])

    current: list[tuple[str, str]] = []
    size = 0
    fresh = 0  # words in `current` that are not overlap from the previous chunk
    for kind, text in units:
        n = count_words(text)
        if current and fresh and size + n > target:
            yield _join(current)
            current = _overlap_tail(current, options.overlap_words)
            # An overlap that would push the next unit over the target is dropped, not the unit.
            if current and count_words(_join(current)) + n > target:
                current = []
            size = sum(count_words(t) for _, t in current)
            fresh = 0
        current.append(("sentence-start" if kind == "sentence" and not current else kind, text))
        size += n
        fresh += n
    if current and fresh:
        yield _join(current)


def chunk_markdown(markdown: str, options: ChunkingOptions | None = None) -> list[Chunk]:
    """Split a Markdown document into chunks that follow its heading structure."""
    options = options or ChunkingOptions()
    drafts: list[tuple[tuple[str, ...], str, int]] = []
    for section in _parse(markdown):
        for text in _section_pieces(section, options):
            drafts.append((section.path, text, count_words(text)))
    merged = _merge_small(drafts, options)
    return [Chunk(i, path, text, n) for i, (path, text, n) in enumerate(merged)]


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _headings(path: tuple[str, ...], start: int) -> list[str]:
    return [f"{'#' * min(6, depth + 1)} {path[depth]}" for depth in range(start, len(path))]


def _merge_small(
    drafts: list[tuple[tuple[str, ...], str, int]], options: ChunkingOptions
) -> list[tuple[tuple[str, ...], str, int]]:
    """Merge small consecutive sections that share a heading; the chunk keeps the shared path and the
    headings below it move into the text."""
    out: list[tuple[tuple[str, ...], str, int]] = []
    last_path: tuple[str, ...] = ()  # path of the last section merged into out[-1]
    for path, text, n in drafts:
        if out:
            prev_path, prev_text, prev_n = out[-1]
            common = _common_prefix(prev_path, path)
            related = path != last_path and (bool(common) or not prev_path)
            small = prev_n < options.min_words or n < options.min_words
            extra = len(prev_path) - len(common) + len(path)  # heading words added to the text
            if related and small and prev_n + n + extra <= options.target_words:
                lead = _headings(prev_path, len(common))
                between = _headings(path, max(len(common), len(_common_prefix(last_path, path))))
                combined = "\n\n".join([*lead, prev_text, *between, text])
                out[-1] = (common, combined, count_words(combined))
                last_path = path
                continue
        out.append((path, text, n))
        last_path = path
    return out


def index_text(document_name: str, chunk: Chunk) -> str:
    """The text that is analysed for retrieval: document name and heading path lead the chunk."""
    return "\n".join([document_name, " ".join(chunk.heading_path), chunk.text])
