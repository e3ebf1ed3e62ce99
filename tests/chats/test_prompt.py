"""What reaches the LLM (CONTRACT sections 4 and 8): prompts, language, passages, history, sampling, budget."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chats.conftest import TEST_MODEL
from tests.chats.helpers import (
    add_sources,
    ask_ok,
    canary,
    continue_ok,
    create_scenario,
    system_message,
    user_message,
)
from tests.fixtures.llm_server import FakeLLM
from tests.fixtures.servers import Api, running_server

CREATIVITY = {1: (0.0, 1.0), 2: (0.1, 0.8), 3: (0.4, 0.8), 4: (0.7, 0.9)}


def _scenarios(api: Api, token: str) -> list[dict[str, Any]]:
    scenarios: list[dict[str, Any]] = api.get("/scenarios", token, params={"perPage": 100}).json()["data"]["scenarios"]
    return scenarios


def test_default_scenario_prompt_layout(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_api.create_group("Team")
    marker = canary()
    [source_id] = add_sources(
        chat_api, chat_admin, [("Volcano Handbook", ["Team"], f"Volcanoes erupt magma. The marker is {marker}.")]
    )
    data = ask_ok(chat_api, chat_admin, "Why do volcanoes erupt?", groups=["Team"], language="de")
    default = next(s for s in _scenarios(chat_api, chat_admin) if s["isDefault"])

    request = llm.last
    assert request["model"] == TEST_MODEL
    system = system_message(request)
    assert system.startswith(default["system_pre_prompt"])
    assert "[1] Volcano Handbook\n" in system
    assert marker in system
    assert system.index(default["system_pre_prompt"]) < system.index("[1] Volcano Handbook")
    assert 'Always answer in German (language code "de")' in system
    assert user_message(request) == "Why do volcanoes erupt?"
    assert len(request["messages"]) == 2

    [source] = data["sources"]
    assert source["sourceId"] == source_id
    assert source["name"] == "Volcano Handbook"
    assert source["page"] == 0
    assert 0.0 < source["score"] <= 1.0
    assert source["excerpt"] and source["excerpt"] in f"Volcanoes erupt magma. The marker is {marker}."
    assert set(source) == {"sourceId", "name", "page", "score", "excerpt"}


@pytest.mark.parametrize("language", ["en", "fr", "ja", "pt-br"])
def test_the_answer_is_asked_for_in_the_chats_language(
    chat_api: Api, chat_admin: str, llm: FakeLLM, language: str
) -> None:
    names = {"en": "English", "fr": "French", "ja": "Japanese", "pt-br": "Brazilian Portuguese"}
    chat_id = ask_ok(chat_api, chat_admin, "Question one", language=language)["chatId"]
    assert f'Always answer in {names[language]} (language code "{language}")' in system_message(llm.last)
    continue_ok(chat_api, chat_admin, chat_id, "Question two")
    assert f'(language code "{language}")' in system_message(llm.last)


def test_scenario_prompts_wrap_the_question(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    scenario_id = create_scenario(
        chat_api,
        chat_admin,
        system_pre_prompt="SYSTEM-PERSONA: you are a pirate.",
        user_pre_prompt="PRE-PROMPT:",
        user_post_prompt="POST-PROMPT.",
        context_retriever_type="none",
    )
    ask_ok(chat_api, chat_admin, "Where is the treasure?", scenarioId=scenario_id)
    system = system_message(llm.last)
    assert system.startswith("SYSTEM-PERSONA: you are a pirate.")
    assert user_message(llm.last) == "PRE-PROMPT:\n\nWhere is the treasure?\n\nPOST-PROMPT."
    assert "PRE-PROMPT" not in system


@pytest.mark.parametrize("creativity", [1, 2, 3, 4])
def test_creativity_sets_temperature_and_top_p(chat_api: Api, chat_admin: str, llm: FakeLLM, creativity: int) -> None:
    scenario_id = create_scenario(chat_api, chat_admin, creativity=creativity)
    chat_id = ask_ok(chat_api, chat_admin, "q", scenarioId=scenario_id)["chatId"]
    temperature, top_p = CREATIVITY[creativity]
    assert llm.last["temperature"] == temperature
    assert llm.last["top_p"] == top_p
    # A continued chat keeps its scenario's sampling.
    continue_ok(chat_api, chat_admin, chat_id, "again")
    assert (llm.last["temperature"], llm.last["top_p"]) == (temperature, top_p)


def test_default_sampling_and_max_tokens(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    default = next(s for s in _scenarios(chat_api, chat_admin) if s["isDefault"])
    ask_ok(chat_api, chat_admin, "q")
    assert (llm.last["temperature"], llm.last["top_p"]) == CREATIVITY[default["creativity"]]
    assert llm.last["max_tokens"] == 1024


def test_history_is_sent_only_when_the_scenario_uses_it(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    with_history = create_scenario(chat_api, chat_admin, context_retriever_type="none", use_history=True)
    without = create_scenario(chat_api, chat_admin, context_retriever_type="none", use_history=False)
    answers = iter(["answer one", "answer two", "answer three"])
    llm.reply = lambda body: next(answers)

    chat_id = ask_ok(chat_api, chat_admin, "question one", scenarioId=with_history)["chatId"]
    continue_ok(chat_api, chat_admin, chat_id, "question two")
    continue_ok(chat_api, chat_admin, chat_id, "question three")
    roles = [(m["role"], m["content"]) for m in llm.last["messages"][1:]]
    assert roles == [
        ("user", "question one"),
        ("assistant", "answer one"),
        ("user", "question two"),
        ("assistant", "answer two"),
        ("user", "question three"),
    ]

    llm.reply = lambda body: "plain"
    chat_id = ask_ok(chat_api, chat_admin, "first without", scenarioId=without)["chatId"]
    continue_ok(chat_api, chat_admin, chat_id, "second without")
    assert [m["role"] for m in llm.last["messages"]] == ["system", "user"]
    assert "first without" not in str(llm.last["messages"])


def test_official_general_scenario_uses_history(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    general = next(s for s in _scenarios(chat_api, chat_admin) if s["context_retriever_type"] == "none")
    chat_id = ask_ok(chat_api, chat_admin, "remember the number 42", scenarioId=general["scenarioId"])["chatId"]
    continue_ok(chat_api, chat_admin, chat_id, "which number?")
    assert "remember the number 42" in [m["content"] for m in llm.last["messages"]]


def test_default_scenario_sends_no_history(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "remember the number 42")["chatId"]
    continue_ok(chat_api, chat_admin, chat_id, "which number?")
    assert "remember the number 42" not in str(llm.last["messages"])


def test_no_retrieval_without_groups_and_public(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    marker = canary()
    add_sources(chat_api, chat_admin, [("Public doc", [], f"Penguins live in Antarctica {marker}.")])
    data = ask_ok(chat_api, chat_admin, "Where do penguins live?")
    assert data["sources"] == []
    system = system_message(llm.last)
    assert marker not in system
    assert "[1] Public doc" not in system
    assert "Answer using the numbered passages" not in system
    with_public = ask_ok(chat_api, chat_admin, "Where do penguins live?", usePublic=True)
    assert marker in system_message(llm.last)
    assert [s["name"] for s in with_public["sources"]] == ["Public doc"]


def test_retriever_none_retrieves_nothing(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    marker = canary()
    add_sources(chat_api, chat_admin, [("Public doc", [], f"Penguins live in Antarctica {marker}.")])
    scenario_id = create_scenario(chat_api, chat_admin, context_retriever_type="none")
    data = ask_ok(chat_api, chat_admin, "Where do penguins live?", usePublic=True, scenarioId=scenario_id)
    assert data["sources"] == []
    assert marker not in str(llm.last)


def test_passages_are_numbered_like_the_sources(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    ids = add_sources(
        chat_api,
        chat_admin,
        [
            ("Alpha notes", [], "Glaciers move slowly. Glaciers carve valleys. Glaciers glaciers glaciers."),
            ("Beta notes", [], "Some glaciers calve icebergs into the sea."),
            ("Unrelated", [], "Bread is baked from flour and water."),
        ],
    )
    data = ask_ok(chat_api, chat_admin, "How do glaciers move?", usePublic=True)
    sources = data["sources"]
    assert [s["sourceId"] for s in sources] == ids[:2]
    assert sources[0]["score"] >= sources[1]["score"]
    system = system_message(llm.last)
    assert system.index("[1] Alpha notes") < system.index("Glaciers carve valleys")
    assert system.index("[2] Beta notes") < system.index("calve icebergs")
    assert "Bread" not in system


def test_k_limits_the_passages(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    add_sources(chat_api, chat_admin, [(f"Doc {i}", [], f"Comets have tails number {i}.") for i in range(6)])
    scenario_id = create_scenario(chat_api, chat_admin, k=2)
    data = ask_ok(chat_api, chat_admin, "comets tails", usePublic=True, scenarioId=scenario_id)
    assert len(data["sources"]) == 2
    system = system_message(llm.last)
    assert "[3]" not in system
    assert sum(f"Comets have tails number {i}." in system for i in range(6)) == 2


def test_similarity_threshold_drops_weak_passages(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    marker = canary()
    add_sources(chat_api, chat_admin, [("Doc", [], f"Comets have tails {marker}.")])
    strict = create_scenario(chat_api, chat_admin, similarity_threshold=0.9999)
    data = ask_ok(chat_api, chat_admin, "comets", usePublic=True, scenarioId=strict)
    assert data["sources"] == []
    assert marker not in str(llm.last)
    assert "No passage of the user's documents matched the question." in system_message(llm.last)
    lenient = create_scenario(chat_api, chat_admin, similarity_threshold=0.0)
    assert ask_ok(chat_api, chat_admin, "comets", usePublic=True, scenarioId=lenient)["sources"]


def test_document_store_gives_whole_documents(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    head, tail = canary(), canary()
    filler = "\n\n".join(f"## Part {i}\n\n" + " ".join(f"filler{i}word{j}" for j in range(120)) for i in range(8))
    long_doc = f"# Manual\n\nThe reactor manual starts here {head}.\n\n{filler}\n\n## End\n\nClosing words {tail}."
    ids = add_sources(
        chat_api,
        chat_admin,
        [("Reactor manual", [], long_doc), ("Short note", [], "A reactor note."), ("Other", [], "Nothing here.")],
    )
    whole = next(s for s in _scenarios(chat_api, chat_admin) if s["context_retriever_type"] == "document_store")
    data = ask_ok(chat_api, chat_admin, "reactor manual starts", usePublic=True, scenarioId=whole["scenarioId"])
    system = system_message(llm.last)
    # The part of the document that matches nothing of the question is there too: the whole document.
    assert head in system and tail in system
    assert "filler7word119" in system
    assert [s["sourceId"] for s in data["sources"]] == ids[:2]
    assert system.count("[1] Reactor manual") == 1

    chunked = create_scenario(chat_api, chat_admin, context_retriever_type="vector_store", k=1)
    ask_ok(chat_api, chat_admin, "reactor manual starts", usePublic=True, scenarioId=chunked)
    assert head in system_message(llm.last)
    assert tail not in system_message(llm.last)


def test_api_key_is_sent_when_configured(make_settings: Any, llm: FakeLLM) -> None:
    settings = make_settings(llm_base_url=llm.url, llm_model="m", llm_api_key="sk-test-key")
    with running_server(settings) as server:
        api = Api(server.base_url)
        token = api.admin_token()
        ask_ok(api, token, "q")
        api.close()
    assert llm.headers[-1]["authorization"] == "Bearer sk-test-key"
    assert llm.last["model"] == "m"


def _estimate(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ch < "\x80")
    return -(-(ascii_chars + 4 * (len(text) - ascii_chars)) // 4)


def test_passages_are_trimmed_to_the_context_budget(make_settings: Any, llm: FakeLLM) -> None:
    settings = make_settings(llm_base_url=llm.url, llm_model="m", llm_context_tokens=1024, llm_max_tokens=256)
    words = [" ".join(f"saturn{i}ring{j}" for j in range(200)) for i in range(6)]
    with running_server(settings) as server:
        api = Api(server.base_url)
        token = api.admin_token()
        add_sources(api, token, [(f"Saturn {i}", [], f"Saturn rings facts. {words[i]}") for i in range(6)])
        question = "Tell me about Saturn rings facts " + "please " * 150
        data = ask_ok(api, token, question, usePublic=True)
        api.close()
    request = llm.last
    # The question is never trimmed...
    assert user_message(request) == question
    # ...and everything fits the budget left for the prompt (context minus the answer's reserve).
    prompt_tokens = sum(_estimate(m["content"]) for m in request["messages"])
    assert prompt_tokens <= 1024 - 256
    system = system_message(request)
    assert "[1] Saturn" in system
    assert sum(words[i] in system for i in range(6)) == 0  # no whole 200-word passage fits
    assert 1 <= len(data["sources"]) < 6


def test_the_question_goes_in_whole_even_beyond_the_budget(make_settings: Any, llm: FakeLLM) -> None:
    settings = make_settings(llm_base_url=llm.url, llm_model="m", llm_context_tokens=1024, llm_max_tokens=256)
    with running_server(settings) as server:
        api = Api(server.base_url)
        token = api.admin_token()
        add_sources(api, token, [("Saturn", [], "Saturn has rings.")])
        question = "saturn " * 1500
        data = ask_ok(api, token, question, usePublic=True)
        api.close()
    assert user_message(llm.last) == question
    assert data["sources"] == []


def test_history_is_trimmed_oldest_first(make_settings: Any, llm: FakeLLM) -> None:
    settings = make_settings(llm_base_url=llm.url, llm_model="m", llm_context_tokens=1024, llm_max_tokens=256)
    with running_server(settings) as server:
        api = Api(server.base_url)
        token = api.admin_token()
        scenario_id = create_scenario(api, token, context_retriever_type="none", use_history=True)
        llm.reply = lambda body: "long answer " * 40
        chat_id = ask_ok(api, token, "turn 0", scenarioId=scenario_id)["chatId"]
        for turn in range(1, 8):
            continue_ok(api, token, chat_id, f"turn {turn}")
        api.close()
    contents = [m["content"] for m in llm.last["messages"]]
    assert contents[-1] == "turn 7"
    assert "turn 6" in contents  # the newest earlier turn stays
    assert "turn 0" not in contents  # the oldest went first
    assert sum(_estimate(c) for c in contents) <= 1024 - 256
