"""The embedded default without an LLM: it quotes visible passages verbatim, cites them, and never invents text."""

from __future__ import annotations

import re

import pytest

from tests.chats.helpers import add_sources, ask_ok, canary, continue_ok, create_scenario
from tests.fixtures.servers import Api

NO_MODEL = "No language model is configured"

DOCS = {
    "Volcanoes": (
        "Volcanoes form where magma reaches the surface. Most volcanoes sit on the edges of tectonic plates. "
        "Hot spots, such as the one under Hawaii, build volcanoes in the middle of plates.\n\n"
        "An eruption can be explosive or effusive. Explosive eruptions throw ash high into the sky."
    ),
    "Glaciers": (
        "Glaciers are rivers of ice that move slowly downhill. They carve U-shaped valleys. "
        "When glaciers melt, sea levels rise."
    ),
    "Bread": "Bread is baked from flour, water, salt and yeast. Sourdough uses wild yeast instead.",
}


def quotes(answer: str) -> list[str]:
    """The block quotes of an answer, each as the text it quotes."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in answer.split("\n"):
        if line.startswith("> ") or line == ">":
            if current is None:
                current = []
                blocks.append(current)
            current.append(line[2:])
        else:
            current = None
    return ["\n".join(block) for block in blocks]


def citations(answer: str) -> list[tuple[int, str]]:
    return [(int(n), name) for n, name in re.findall(r"^\[(\d+)\] (.+)$", answer, flags=re.MULTILINE)]


def test_says_plainly_that_no_model_is_configured_when_nothing_is_searched(api: Api, admin: str) -> None:
    add_sources(api, admin, [(name, [], text) for name, text in DOCS.items()])
    data = ask_ok(api, admin, "How do volcanoes form?")
    assert NO_MODEL in data["answer"]
    assert "nothing to quote" in data["answer"]
    assert data["sources"] == []
    assert quotes(data["answer"]) == []
    for text in DOCS.values():
        assert text.split(".")[0] not in data["answer"]


def test_says_plainly_that_nothing_matched(api: Api, admin: str) -> None:
    add_sources(api, admin, [(name, [], text) for name, text in DOCS.items()])
    data = ask_ok(api, admin, "quantum chromodynamics lattice", usePublic=True)
    assert NO_MODEL in data["answer"]
    assert "nothing to quote" in data["answer"]
    assert data["sources"] == []


@pytest.mark.parametrize(
    "question",
    [
        "How do volcanoes form?",
        "Where do explosive eruptions throw ash?",
        "What happens when glaciers melt?",
        "volcanoes glaciers bread",
        "What is sourdough?",
    ],
)
def test_answers_are_verbatim_quotes_of_visible_passages(api: Api, admin: str, question: str) -> None:
    api.create_group("Hidden")
    hidden = canary()
    add_sources(api, admin, [(name, [], text) for name, text in DOCS.items()])
    # A matching document outside the chat's scope: it must never be quoted.
    add_sources(api, admin, [("Secret volcanoes", ["Hidden"], f"Volcanoes glaciers bread eruption {hidden}.")])
    data = ask_ok(api, admin, question, usePublic=True)
    answer = data["answer"]
    assert answer.startswith(NO_MODEL)
    assert hidden not in answer
    found = quotes(answer)
    assert found, answer
    for quote in found:
        assert any(quote in text for text in DOCS.values()), quote
    # Every quote is cited under the number and name of an entry of `sources`, in order.
    cited = citations(answer)
    assert [name for _, name in cited] == [s["name"] for s in data["sources"]]
    assert [n for n, _ in cited] == list(range(1, len(cited) + 1))
    assert len(found) == len(cited)
    # Beyond the fixed sentence about the missing model, nothing but citations and quotes.
    body = answer.split("\n")[1:]
    assert all(not line or line.startswith(">") or re.match(r"^\[\d+\] ", line) for line in body)


def test_the_best_matching_sentence_is_quoted(api: Api, admin: str) -> None:
    add_sources(api, admin, [(name, [], text) for name, text in DOCS.items()])
    data = ask_ok(api, admin, "Why do sea levels rise when glaciers melt?", usePublic=True)
    assert data["sources"][0]["name"] == "Glaciers"
    assert "When glaciers melt, sea levels rise." in quotes(data["answer"])[0]


def test_long_passages_are_quoted_in_part(api: Api, admin: str) -> None:
    filler = " ".join(f"Sentence number {i} talks about nothing much." for i in range(60))
    text = f"{filler} The lighthouse keeper lit the lamp at dusk. {filler}"
    add_sources(api, admin, [("Lighthouse", [], text)])
    data = ask_ok(api, admin, "When did the lighthouse keeper light the lamp?", usePublic=True)
    [quote] = quotes(data["answer"])
    assert "The lighthouse keeper lit the lamp at dusk." in quote
    assert quote in text
    assert len(quote.split()) <= 80


def test_whole_documents_are_quoted_verbatim_too(api: Api, admin: str) -> None:
    add_sources(api, admin, [(name, [], text) for name, text in DOCS.items()])
    scenario_id = create_scenario(api, admin, context_retriever_type="document_store", k=2)
    data = ask_ok(api, admin, "volcano eruptions ash", usePublic=True, scenarioId=scenario_id)
    for quote in quotes(data["answer"]):
        assert any(quote in text for text in DOCS.values())
    assert data["sources"][0]["name"] == "Volcanoes"


def test_continued_chats_quote_as_well(api: Api, admin: str) -> None:
    add_sources(api, admin, [(name, [], text) for name, text in DOCS.items()])
    chat_id = ask_ok(api, admin, "volcanoes", usePublic=True)["chatId"]
    data = continue_ok(api, admin, chat_id, "What is bread baked from?")
    assert "Bread is baked from flour, water, salt and yeast." in quotes(data["answer"])[0]
