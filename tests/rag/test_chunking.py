"""Markdown chunking: heading paths, atomic code blocks and tables, bounded sizes, overlap."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest

from privategpt.rag.chunking import Chunk, ChunkingOptions, chunk_markdown, index_text

SMALL = ChunkingOptions(target_words=60, overlap_words=12, min_words=15, max_block_words=120)


def _sentences(n: int, prefix: str = "Sentence") -> str:
    return " ".join(f"{prefix} {i} has exactly seven words here." for i in range(n))


def test_empty_document_has_no_chunks() -> None:
    assert chunk_markdown("") == []
    assert chunk_markdown("\n\n   \n") == []


def test_heading_paths_follow_the_structure() -> None:
    doc = f"""# Guide

{_sentences(3)}

## Install

{_sentences(4)}

### Linux

{_sentences(4)}

## Usage

{_sentences(4)}
"""
    chunks = chunk_markdown(doc, ChunkingOptions(target_words=60, overlap_words=10, min_words=0))
    assert [c.heading_path for c in chunks] == [
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "Linux"),
        ("Guide", "Usage"),
    ]
    assert all("#" not in c.text for c in chunks)


def test_setext_headings_and_closing_hashes() -> None:
    doc = "Title\n=====\n\nintro text here\n\nPart ##\n-------\n\nbody text here\n"
    chunks = chunk_markdown(doc, ChunkingOptions(min_words=0))
    assert [c.heading_path for c in chunks] == [("Title",), ("Title", "Part ##")]


def test_atx_closing_sequence_is_stripped() -> None:
    chunks = chunk_markdown("## Setup ##\n\ntext\n", ChunkingOptions(min_words=0))
    assert chunks[0].heading_path == ("Setup",)


def test_fenced_code_is_never_cut_and_hashes_inside_are_not_headings() -> None:
    code = "```python\n" + "\n".join(f"# comment {i}\nx{i} = {i}" for i in range(12)) + "\n```"
    doc = f"# Code\n\n{_sentences(6)}\n\n{code}\n\n{_sentences(6)}\n"
    chunks = chunk_markdown(doc, SMALL)
    with_code = [c for c in chunks if "```python" in c.text]
    assert len(with_code) == 1
    assert code in with_code[0].text
    assert all(c.heading_path == ("Code",) for c in chunks)


def test_tilde_fences_and_unclosed_fences() -> None:
    doc = "# A\n\n~~~\n# not a heading\n~~~\n\n# B\n\n```\nunclosed\n# still code"
    chunks = chunk_markdown(doc, ChunkingOptions(min_words=0))
    assert [c.heading_path for c in chunks] == [("A",), ("B",)]
    assert "# still code" in chunks[1].text


def test_tables_are_never_cut() -> None:
    table = "| name | value |\n|---|---:|\n" + "\n".join(f"| row {i} | {i} |" for i in range(12))
    doc = f"# T\n\n{_sentences(7)}\n\n{table}\n\n{_sentences(7)}\n"
    chunks = chunk_markdown(doc, SMALL)
    holders = [c for c in chunks if "| name | value |" in c.text]
    assert len(holders) == 1
    assert table in holders[0].text


def test_oversize_table_is_split_between_rows_with_the_header_repeated() -> None:
    table = "| name | value |\n|---|---|\n" + "\n".join(f"| row {i} | some longer cell text {i} |" for i in range(80))
    chunks = chunk_markdown(f"# Big\n\n{table}\n", SMALL)
    assert len(chunks) > 1
    rows_seen = []
    for chunk in chunks:
        lines = chunk.text.split("\n")
        assert lines[:2] == ["| name | value |", "|---|---|"]
        rows_seen += lines[2:]
    assert rows_seen == table.split("\n")[2:]


def test_oversize_code_block_is_split_between_lines_and_refenced() -> None:
    body = [f"print('line {i} with several words in it')" for i in range(100)]
    code = "```python\n" + "\n".join(body) + "\n```"
    chunks = chunk_markdown(f"# Big\n\n{code}\n", SMALL)
    assert len(chunks) > 1
    seen = []
    for chunk in chunks:
        lines = chunk.text.split("\n")
        assert lines[0] == "```python" and lines[-1] == "```"
        seen += lines[1:-1]
    assert seen == body


def test_long_sections_are_split_with_bounded_size_and_overlap() -> None:
    chunks = chunk_markdown(f"# Long\n\n{_sentences(60)}\n", SMALL)
    assert len(chunks) > 5
    assert all(c.n_words <= SMALL.target_words for c in chunks)
    for previous, current in pairwise(chunks):
        # The next chunk starts with the previous one's last sentence.
        last = re.findall(r"Sentence \d+ has", previous.text)[-1]
        assert current.text.startswith(last)
    # Every sentence survives somewhere.
    joined = " ".join(c.text for c in chunks)
    assert all(f"Sentence {i} has" in joined for i in range(60))


def test_overlap_is_small_and_never_repeats_code() -> None:
    code = "```\n" + "\n".join(f"code line {i}" for i in range(15)) + "\n```"
    chunks = chunk_markdown(f"# Long\n\n{_sentences(20)}\n\n{code}\n\n{_sentences(20, 'Other')}\n", SMALL)
    assert sum(code in c.text for c in chunks) == 1
    for previous, current in pairwise(chunks):
        shared = set(re.findall(r"\w+ \d+ has", previous.text)) & set(re.findall(r"\w+ \d+ has", current.text))
        assert len(shared) * 7 <= SMALL.overlap_words


def test_single_huge_sentence_is_cut_into_word_runs() -> None:
    words = " ".join(f"w{i}" for i in range(500))
    chunks = chunk_markdown(words, SMALL)
    assert all(c.n_words <= SMALL.target_words for c in chunks)
    assert {w for c in chunks for w in c.text.split()} == set(words.split())


def test_small_sections_below_one_heading_are_merged() -> None:
    doc = "# FAQ\n\n## Q1\n\nAnswer one.\n\n## Q2\n\nAnswer two.\n\n# Other\n\nSeparate text.\n"
    chunks = chunk_markdown(doc)
    assert [c.heading_path for c in chunks] == [("FAQ",), ("Other",)]
    assert chunks[0].text == "## Q1\n\nAnswer one.\n\n## Q2\n\nAnswer two."


def test_merge_keeps_headings_of_merged_sections_in_the_text() -> None:
    doc = "# Guide\n\nIntro.\n\n## Install\n\nRun it.\n\n## Usage\n\nUse it.\n"
    [chunk] = chunk_markdown(doc)
    assert chunk.heading_path == ("Guide",)
    assert "## Install" in chunk.text and "## Usage" in chunk.text


def test_chunk_sizes_respect_the_default_target() -> None:
    doc = "\n\n".join(f"## Part {p}\n\n{_sentences(50)}" for p in range(4))
    chunks = chunk_markdown(doc)
    assert all(c.n_words <= ChunkingOptions().target_words for c in chunks)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_index_text_leads_with_name_and_heading_path() -> None:
    chunk = Chunk(0, ("Guide", "Install"), "Run it.", 2)
    assert index_text("Handbook", chunk) == "Handbook\nGuide Install\nRun it."


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError):
        ChunkingOptions(target_words=10, overlap_words=10)
    with pytest.raises(ValueError):
        ChunkingOptions(target_words=100, max_block_words=50)
