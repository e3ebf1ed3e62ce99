"""Leak-proof chats: users x groups x public x chat configurations, with a canary word in every document.

Every document shares the word "zephyr" with the question, so retrieval would find all of them; each also
holds its own canary. A canary may reach the prompt, the answer and the sources list only when the chat
may see its document (public with usePublic, or in one of the chat's groups), also after a membership is
revoked, a source is moved between groups, and a source is deleted. The fake LLM echoes its whole prompt
back as the answer, so the answer shows exactly what reached the model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.chats.helpers import add_sources, canary, create_scenario, get_chat, new_chat
from tests.fixtures.llm_server import FakeLLM
from tests.fixtures.servers import Api

QUESTION = "Tell me about zephyr"


@dataclass
class Doc:
    name: str
    groups: list[str]
    canary: str = field(default_factory=canary)
    source_id: str = ""

    @property
    def content(self) -> str:
        return f"The zephyr report of {self.name}. Its code word is {self.canary}."


@dataclass
class User:
    key: str
    groups: list[str]
    use_public: bool
    token: str = ""
    email: str = ""


def visible(doc: Doc, groups: list[str], use_public: bool) -> bool:
    return (use_public and not doc.groups) or bool(set(doc.groups) & set(groups))


def echo(body: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in body["messages"])


@pytest.fixture
def world(chat_api: Api, chat_admin: str, llm: FakeLLM) -> dict[str, Any]:
    for group in ("G1", "G2", "G3"):
        chat_api.create_group(group)
    docs = [
        Doc("only-g1", ["G1"]),
        Doc("only-g2", ["G2"]),
        Doc("g1-and-g2", ["G1", "G2"]),
        Doc("only-g3", ["G3"]),
        Doc("public", []),
    ]
    ids = add_sources(chat_api, chat_admin, [(d.name, d.groups, d.content) for d in docs])
    for doc, source_id in zip(docs, ids, strict=True):
        doc.source_id = source_id
    users = [
        User("g1-public", ["G1"], True),
        User("g2-private", ["G2"], False),
        User("g1g2-public", ["G1", "G2"], True),
        User("nogroup-public", [], True),
        User("g3-private", ["G3"], False),
    ]
    for user in users:
        user.email, password = chat_api.create_user(groups=user.groups, usePublic=user.use_public)
        user.token = chat_api.login(user.email, password)
    scenarios = {
        "default": None,
        "wide": create_scenario(chat_api, chat_admin, k=20),
        "documents": create_scenario(chat_api, chat_admin, context_retriever_type="document_store", k=20),
        "history": create_scenario(chat_api, chat_admin, context_retriever_type="none", use_history=True),
    }
    llm.reply = echo
    return {"docs": docs, "users": users, "scenarios": scenarios}


def check(api: Api, llm: FakeLLM, docs: list[Doc], response: Any, allowed: list[Doc], complete: bool) -> None:
    """No canary of a document outside `allowed` in the prompt, the answer or the sources."""
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    prompt = "\n".join(m["content"] for m in llm.last["messages"])
    answer = data["answer"]
    source_ids = {s["sourceId"] for s in data["sources"]}
    allowed_ids = {d.source_id for d in allowed}
    for doc in docs:
        if doc in allowed:
            if complete:
                assert doc.canary in prompt, doc.name
                assert doc.source_id in source_ids, doc.name
            continue
        assert doc.canary not in prompt, doc.name
        assert doc.canary not in answer, doc.name
        assert doc.canary not in str(data["sources"]), doc.name
    assert source_ids <= allowed_ids


def test_canary_matrix(chat_api: Api, llm: FakeLLM, world: dict[str, Any]) -> None:
    docs: list[Doc] = world["docs"]
    checked = 0
    for user in world["users"]:
        subsets = [list(c) for r in range(len(user.groups) + 1) for c in itertools.combinations(user.groups, r)]
        for groups, use_public, (scenario, scenario_id) in itertools.product(
            subsets, (False, True), world["scenarios"].items()
        ):
            body: dict[str, Any] = {"groups": groups, "usePublic": use_public}
            if scenario_id:
                body["scenarioId"] = scenario_id
            calls = len(llm.requests)
            response = new_chat(chat_api, user.token, QUESTION, **body)
            if use_public and not user.use_public:
                assert response.status_code == 403, response.text
                assert len(llm.requests) == calls
                continue
            allowed = [] if scenario == "history" else [d for d in docs if visible(d, groups, use_public)]
            check(chat_api, llm, docs, response, allowed, complete=True)
            checked += 1
    assert checked > 40


def test_groups_and_public_beyond_the_callers_are_refused(chat_api: Api, llm: FakeLLM, world: dict[str, Any]) -> None:
    for user in world["users"]:
        for group in {"G1", "G2", "G3"} - set(user.groups):
            response = new_chat(chat_api, user.token, QUESTION, groups=[*user.groups, group])
            assert response.status_code == 403, (user.key, group)
        if not user.use_public:
            assert new_chat(chat_api, user.token, QUESTION, usePublic=True).status_code == 403
    assert llm.requests == []


def test_revoked_membership_is_refused_on_the_next_question(
    chat_api: Api, chat_admin: str, llm: FakeLLM, world: dict[str, Any]
) -> None:
    docs: list[Doc] = world["docs"]
    user = next(u for u in world["users"] if u.key == "g1g2-public")
    both = new_chat(chat_api, user.token, QUESTION, groups=["G1", "G2"]).json()["data"]["chatId"]
    only_g1 = new_chat(chat_api, user.token, QUESTION, groups=["G1"]).json()["data"]["chatId"]
    g2 = next(d for d in docs if d.name == "only-g2")
    assert g2.source_id in {s["sourceId"] for s in get_chat(chat_api, user.token, both)["messages"][0]["sources"]}

    response = chat_api.patch("/users", chat_admin, json={"email": user.email, "groups": ["G1"]})
    assert response.status_code == 200, response.text
    calls = len(llm.requests)
    refused = chat_api.patch(f"/chats/{both}", user.token, json={"question": QUESTION})
    assert refused.status_code == 403, refused.text
    assert chat_api.post(f"/chats/{both}", user.token, json={"question": QUESTION}).status_code == 403
    assert len(llm.requests) == calls  # no document of G2 went anywhere
    assert len(get_chat(chat_api, user.token, both)["messages"]) == 1
    # The older answer's sources no longer show the document the user cannot see now.
    old_sources = get_chat(chat_api, user.token, both)["messages"][0]["sources"]
    assert g2.source_id not in {s["sourceId"] for s in old_sources}

    still = chat_api.patch(f"/chats/{only_g1}", user.token, json={"question": QUESTION})
    allowed = [d for d in docs if visible(d, ["G1"], False)]
    check(chat_api, llm, docs, still, allowed, complete=True)


def test_revoked_use_public_is_refused_on_the_next_question(
    chat_api: Api, chat_admin: str, llm: FakeLLM, world: dict[str, Any]
) -> None:
    user = next(u for u in world["users"] if u.key == "nogroup-public")
    chat_id = new_chat(chat_api, user.token, QUESTION, usePublic=True).json()["data"]["chatId"]
    chat_api.patch("/users", chat_admin, json={"email": user.email, "usePublic": False})
    calls = len(llm.requests)
    assert chat_api.patch(f"/chats/{chat_id}", user.token, json={"question": QUESTION}).status_code == 403
    assert len(llm.requests) == calls


def test_a_moved_source_follows_its_new_groups(
    chat_api: Api, chat_admin: str, llm: FakeLLM, world: dict[str, Any]
) -> None:
    docs: list[Doc] = world["docs"]
    g1_user = next(u for u in world["users"] if u.key == "g1-public")
    g2_user = next(u for u in world["users"] if u.key == "g2-private")
    g1_chat = new_chat(chat_api, g1_user.token, QUESTION, groups=["G1"]).json()["data"]["chatId"]
    g2_chat = new_chat(chat_api, g2_user.token, QUESTION, groups=["G2"]).json()["data"]["chatId"]
    moved = next(d for d in docs if d.name == "only-g1")

    response = chat_api.patch(f"/sources/{moved.source_id}", chat_admin, json={"groups": ["G2"]})
    assert response.status_code == 200, response.text
    moved.groups = ["G2"]

    for user, chat_id, groups in ((g1_user, g1_chat, ["G1"]), (g2_user, g2_chat, ["G2"])):
        answer = chat_api.patch(f"/chats/{chat_id}", user.token, json={"question": QUESTION})
        check(chat_api, llm, docs, answer, [d for d in docs if visible(d, groups, False)], complete=True)
    assert moved.canary in llm.last["messages"][0]["content"]  # the G2 chat now sees it


def test_a_deleted_source_is_never_used_again(
    chat_api: Api, chat_admin: str, llm: FakeLLM, world: dict[str, Any]
) -> None:
    docs: list[Doc] = world["docs"]
    user = next(u for u in world["users"] if u.key == "nogroup-public")
    public = next(d for d in docs if d.name == "public")
    for scenario_id in (None, world["scenarios"]["documents"]):
        body: dict[str, Any] = {"usePublic": True, **({"scenarioId": scenario_id} if scenario_id else {})}
        chat_id = new_chat(chat_api, user.token, QUESTION, **body).json()["data"]["chatId"]
        assert public.canary in llm.last["messages"][0]["content"]
        if scenario_id is None:
            first_chat = chat_id
    assert chat_api.delete(f"/sources/{public.source_id}", chat_admin).status_code == 200
    remaining = [d for d in docs if d is not public]
    again = chat_api.patch(f"/chats/{first_chat}", user.token, json={"question": QUESTION})
    check(chat_api, llm, [*remaining, public], again, [], complete=False)
    assert again.json()["data"]["sources"] == []
    assert get_chat(chat_api, user.token, first_chat)["messages"][0]["sources"] == []
    whole = new_chat(chat_api, user.token, QUESTION, usePublic=True, scenarioId=world["scenarios"]["documents"])
    check(chat_api, llm, docs, whole, [], complete=False)


def test_history_never_carries_a_document_the_user_lost(
    chat_api: Api, chat_admin: str, llm: FakeLLM, world: dict[str, Any]
) -> None:
    """A custom scenario switched from retrieval to history must not replay answers quoting lost documents."""
    docs: list[Doc] = world["docs"]
    user = next(u for u in world["users"] if u.key == "g1g2-public")
    scenario_id = create_scenario(chat_api, chat_admin, k=20)
    chat_id = new_chat(chat_api, user.token, QUESTION, groups=["G1"], scenarioId=scenario_id).json()["data"]["chatId"]
    g1 = next(d for d in docs if d.name == "only-g1")
    assert g1.canary in llm.last["messages"][0]["content"]
    switched = chat_api.patch(
        f"/scenarios/{scenario_id}", chat_admin, json={"context_retriever_type": "none", "use_history": True}
    )
    assert switched.status_code == 200, switched.text
    # Still visible: the earlier turn (which quotes the G1 document) is history the model may see.
    chat_api.patch(f"/chats/{chat_id}", user.token, json={"question": "and then?"})
    assert g1.canary in str(llm.last["messages"])
    # Moved out of the user's reach: that turn is no longer sent.
    chat_api.patch(f"/sources/{g1.source_id}", chat_admin, json={"groups": ["G3"]})
    response = chat_api.patch(f"/chats/{chat_id}", user.token, json={"question": "and now?"})
    assert response.status_code == 200, response.text
    assert g1.canary not in str(llm.last["messages"])
