"""The prompt of one question: what the language model sees, laid out and fitted into the context budget.

Layout (CONTRACT section 8):
* system message: the scenario's `system_pre_prompt` first; then the retrieved passages, grouped by
  source and numbered `[1]`, `[2]`, ... with the source's name (the numbers are those of the `sources`
  list the client receives); then the instruction to answer in the chat's language;
* earlier turns (question, answer) only when the scenario uses history;
* user message: `user_pre_prompt`, the question, `user_post_prompt`.

Budget: the prompt plus the answer must fit `PGPT_LLM_CONTEXT_TOKENS`. The question, its wrapping
prompts, the system prompt and the instructions always go in whole; passages then fill what is left in
rank order (the one that no longer fits is cut, the rest dropped), and history fills what remains after
them, newest turns first. Tokens are estimated without a tokenizer, erring on the large side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from privategpt.llm import Message, Passage, Prompt

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "de": "German", "it": "Italian", "fr": "French", "es": "Spanish", "ar": "Arabic",
    "bg": "Bulgarian", "cs": "Czech", "eo": "Esperanto", "et": "Estonian", "el": "Greek", "fi": "Finnish",
    "fa": "Persian", "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "ja": "Japanese",
    "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese",
    "pt-br": "Brazilian Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sv": "Swedish",
    "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}  # fmt: skip

PASSAGES_INTRO = (
    "Answer using the numbered passages below, taken from the user's documents. Cite the passages you use "
    "by their number in square brackets, like [1]."
)
NO_PASSAGES = "No passage of the user's documents matched the question."
# Per-message overhead of chat formats (role markers, separators).
_MESSAGE_OVERHEAD = 8
# A cut passage shorter than this is not worth its header.
_MIN_CUT_TOKENS = 32


def language_instruction(language: str) -> str:
    name = LANGUAGE_NAMES.get(language, language)
    return f'Always answer in {name} (language code "{language}"), whatever the language of the documents.'


def estimate_tokens(text: str) -> int:
    """A tokenizer-free upper-side estimate: ~4 ASCII characters per token, one per other character."""
    ascii_chars = len(text.encode("ascii", errors="ignore"))
    return math.ceil(ascii_chars / 4 + (len(text) - ascii_chars))


def _cut(text: str, tokens: int) -> str:
    """The longest prefix of `text`, ending at a whitespace, estimated at no more than `tokens`."""
    # No character costs less than a quarter token, so no longer prefix can fit.
    lo, hi = 0, min(len(text), 4 * tokens)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_tokens(text[:mid]) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    prefix = text[:lo]
    space = max(prefix.rfind(" "), prefix.rfind("\n"))
    return (prefix[:space] if space > 0 else prefix).rstrip()


@dataclass(frozen=True)
class Candidate:
    """A retrieved passage, best first, before numbering and budgeting."""

    source_id: str
    source_name: str
    text: str
    score: float


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    # The sources whose text this turn's answer was produced from (see `ChatMessage.context_source_ids`).
    context_source_ids: frozenset[str] = frozenset()


def _header(number: int, name: str) -> str:
    return f"[{number}] {name}"


def _fit_passages(candidates: Sequence[Candidate], budget: int) -> list[Passage]:
    """Passages in rank order while they fit; numbers follow the first appearance of each source."""
    numbers: dict[str, int] = {}
    passages: list[Passage] = []
    left = budget
    for candidate in candidates:
        number = numbers.get(candidate.source_id)
        header_cost = 0 if number is not None else estimate_tokens(_header(len(numbers) + 1, candidate.source_name))
        cost = header_cost + estimate_tokens(candidate.text) + 2
        text = candidate.text
        cut = cost > left
        if cut:
            room = left - header_cost - 2
            text = _cut(text, room) if room >= _MIN_CUT_TOKENS else ""
            if not text:
                break
            cost = header_cost + estimate_tokens(text) + 2
        if number is None:
            number = numbers[candidate.source_id] = len(numbers) + 1
        passages.append(Passage(number, candidate.source_id, candidate.source_name, text, candidate.score))
        left -= cost
        if cut:
            break  # the budget is spent
    return passages


def _render_passages(passages: Sequence[Passage]) -> str:
    blocks: list[str] = []
    current = 0
    for passage in sorted(passages, key=lambda p: p.number):  # stable: rank order within a source
        if passage.number != current:
            current = passage.number
            blocks.append(f"{_header(passage.number, passage.source_name)}\n{passage.text}")
        else:
            blocks.append(passage.text)
    return "\n\n".join(blocks)


def build_prompt(
    *,
    system_pre_prompt: str,
    user_pre_prompt: str,
    user_post_prompt: str,
    language: str,
    question: str,
    searched: bool,
    candidates: Sequence[Candidate],
    history: Sequence[Turn],
    budget_tokens: int,
) -> Prompt:
    """Lay out the prompt and fit passages and history into `budget_tokens` (never the question)."""
    user_text = "\n\n".join(part for part in (user_pre_prompt.strip(), question, user_post_prompt.strip()) if part)
    fixed_parts = [system_pre_prompt.strip(), language_instruction(language)]
    if searched:
        fixed_parts.append(PASSAGES_INTRO if candidates else NO_PASSAGES)
    left = budget_tokens - sum(estimate_tokens(p) for p in fixed_parts) - estimate_tokens(user_text)
    left -= 2 * _MESSAGE_OVERHEAD

    passages = _fit_passages(candidates, left) if searched else []
    left -= sum(estimate_tokens(p.text) + 2 for p in passages)
    left -= sum(estimate_tokens(_header(p.number, p.source_name)) for p in {p.number: p for p in passages}.values())

    kept: list[Turn] = []
    for turn in reversed(history):
        cost = estimate_tokens(turn.question) + estimate_tokens(turn.answer) + 2 * _MESSAGE_OVERHEAD
        if cost > left:
            break
        kept.append(turn)
        left -= cost
    kept.reverse()

    system_parts = [system_pre_prompt.strip()]
    if searched:
        system_parts.append(f"{PASSAGES_INTRO}\n\n{_render_passages(passages)}" if passages else NO_PASSAGES)
    system_parts.append(language_instruction(language))
    messages = [Message("system", "\n\n".join(p for p in system_parts if p))]
    for turn in kept:
        messages += [Message("user", turn.question), Message("assistant", turn.answer)]
    messages.append(Message("user", user_text))
    return Prompt(
        messages=tuple(messages),
        question=question,
        passages=tuple(passages),
        searched=searched,
        language=language,
    )
